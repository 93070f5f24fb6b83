"""Stable Diffusion v1.x component configurations as published, to build full-size models offline.

Timing and memory do not depend on weight values, so a model built from these tables with random
weights costs what SD v1.4 costs; expand_throughput.py, next to this file, builds them. As a script
it writes them as a diffusers folder without weights, which `expand.py --dry_run --model DIR` reads:

    python benchmarks/sd_configs.py --write_configs /tmp/sd-v1-configs
"""

import argparse
import json
import sys
from pathlib import Path

# CompVis/stable-diffusion-v1-4 unet/config.json: 859,520,964 parameters.
SD_V1_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
}
# CompVis/stable-diffusion-v1-4 vae/config.json (scaling_factor is diffusers' SD v1 value): 83,653,863 parameters.
SD_V1_VAE = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}
# CLIP ViT-L/14 text tower, CompVis/stable-diffusion-v1-4 text_encoder/config.json: 123,060,480
# parameters. Token ids come from the project's offline tokenizer (distdiff.tiny_sd.model); prompts are
# padded to 77 tokens either way, so the cost is CLIP's.
SD_V1_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}


def write_config_folder(folder: str | Path) -> Path:
    """SD v1.4's diffusers folder without weights: model_index.json and the unet, vae, text_encoder, scheduler (SD
    v1's noise schedule, as DDIM) and tokenizer (the project's offline one) configurations."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from distdiff.tiny_sd.model import SCHEDULER_CONFIG, build_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
             "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    with torch.device("meta"):  # the config as diffusers writes it, with every default filled in; no weights made
        UNet2DConditionModel(**SD_V1_UNET).save_config(folder / "unet")
        AutoencoderKL(**SD_V1_VAE).save_config(folder / "vae")
    CLIPTextConfig(**SD_V1_TEXT_ENCODER).save_pretrained(folder / "text_encoder")
    DDIMScheduler(**SCHEDULER_CONFIG).save_config(folder / "scheduler")
    build_tokenizer().save_pretrained(folder / "tokenizer")
    return folder


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distdiff, as expand_ranks.py
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write_configs", required=True, metavar="DIR", help="folder to write SD v1.4's configs to")
    print(write_config_folder(parser.parse_args().write_configs))
