"""IAM: service accounts, roles and policies, and the check of each call against them."""
