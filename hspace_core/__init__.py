"""hspace: semantic editing in the h-space (the UNet bottleneck) of diffusion models."""
__version__ = "0.1.0"
