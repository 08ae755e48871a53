"""Cloud Scheduler: HTTP jobs on a cron in a time zone, their deliveries, a test clock."""
