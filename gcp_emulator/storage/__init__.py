"""Cloud Storage: the buckets and objects `gcloud builds submit` stages its source in, and
Cloud Build writes its logs to."""
