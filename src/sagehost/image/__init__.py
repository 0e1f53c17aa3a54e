"""Container images: render and build them (`sagehost build`), run them as SageMaker does
(`sagehost local`), and check them (`sagehost verify IMAGE`)."""
