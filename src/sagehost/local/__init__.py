"""Local runs that behave as SageMaker does: `sagehost local serve` and `sagehost local train`."""
