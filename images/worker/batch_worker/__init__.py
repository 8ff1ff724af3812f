"""The worker package: runs inside each AWS Batch job (a container on AWS, a process locally)."""
