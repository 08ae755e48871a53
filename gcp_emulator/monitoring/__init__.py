"""Cloud Monitoring: time series the services write, notification channels, alert policies."""
