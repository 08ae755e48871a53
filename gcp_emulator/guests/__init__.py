"""What runs inside an emulated VM: a process group on this host (process.py), or a real Debian
12 VM under QEMU (qemu.py, its image vm_image.py); and the serial console both write
(serial_port.py)."""
