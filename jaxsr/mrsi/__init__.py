"""Multi-scale MRSI super-resolution with adjustable sharpness."""
