"""sagehost on AWS: deploy to SageMaker, list and delete what it deployed.

boto3 is imported here and nowhere else in sagehost (the `aws` extra: pip install 'sagehost[aws]').
Every call goes through `session.Aws`; every botocore exception is translated in `boundary`.
"""
