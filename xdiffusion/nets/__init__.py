"""The spatio-temporal U-Net denoiser (pure torch)."""

from xdiffusion.nets.unet import UNet3D, UNetConfig, unet_config

__all__ = ["UNet3D", "UNetConfig", "unet_config"]
