"""The torch side of nitro-edge: a source's modules, wrapped to the component contract.

`loading` reads a source folder into fp32 modules; `wrappers` holds the text encoder, the generator
(UNet plus the LCM x0 step) and the VAE decoder wrappers that export traces and the torch backend
runs; `unet_encoder` is the UNet's encoder half, shared by the discriminator backbone and the
Core ML chunk split. Export and training depend on this package, never on a runtime.
Importing it imports torch.
"""
