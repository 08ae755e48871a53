"""Cloud Logging: the entries the services write (a Cloud Run task's lines), and entries.list."""
