"""The Stable Diffusion img2img pipeline with guidance hooks, its building blocks and its loader."""
