"""expand.py's command line: one flag per ExpandConfig field (the authors' names as aliases), with its default.

The flags only describe; distdiff.jobs.expand_config checks and resolves what they are set to.
"""

from __future__ import annotations

import argparse

from distdiff.cli import add_threads_argument
from distdiff.jobs.expand_config import CLASS_TOKENS, GUIDANCE, OPTIMIZE_TARGETS, ExpandConfig
from distdiff.method.direct import RhoSchedule
from distdiff.method.guidance import GUIDANCE_STEP
from distdiff.method.observers import SELECTION_SCORES
from distdiff.method.prototypes import CLUSTERING_METHODS
from distdiff.method.transform import TransformInit
from distdiff.pipelines.sampling import PRECISIONS, SOURCE_CROPS, START_INDEX_FORMULAS, STRENGTH
from distdiff.report.feature_spaces import add_feature_space_argument


def add_expand_arguments(p: argparse.ArgumentParser) -> None:
    """expand.py's flags (the authors' names as aliases): one per ExpandConfig field, with its default."""
    D = ExpandConfig
    p.add_argument("-d", "--dataset", required=True, help="digits, imagefolder:PATH or a registered dataset")
    p.add_argument("--model", "--pretrained_model_name_or_path", dest="model", default=None,
                   help="SD hub id or local diffusers folder (default: the dataset's registry entry, "
                        "distdiff/data/registry.py: SD v1.4, the embedded tiny SD for digits)")
    p.add_argument("-a", "--guide_arch", "--arch", dest="guide_arch", default=None,
                   help="guide architecture (default: the dataset's registry entry: resnet50, smallcnn for digits)")
    p.add_argument("--guide_checkpoint", "--encoder_weight_path", dest="guide_checkpoint", default=None,
                   help="guide model_best.pth.tar (default: what `train_original.py DATASET ARCH 0.1 False 0` "
                        "writes; that command with --print_checkpoint prints it)")
    p.add_argument("--output_dir", default=None, help="default: expanded/<dataset>/<distdiff|sd|...>_<N>x")
    p.add_argument("--num_images_per_prompt", type=int, default=D.num_images_per_prompt, help="copies per image")
    p.add_argument("--strength", type=float, default=None,
                   help=f"img2img strength in (0, 1] (default: {STRENGTH}; the dataset's paper value, e.g. 0.2 for pathmnist)")
    p.add_argument("--steps", type=int, default=D.steps, help="DDIM steps T")
    p.add_argument("--guidance_scale", type=float, default=D.guidance_scale, help="classifier-free guidance")
    p.add_argument("--guidance_step", type=int, default=None,
                   help=f"M: guide at schedule index T-M (default: {GUIDANCE_STEP}; the dataset's paper value, e.g. 10 "
                        f"for pathmnist)")
    p.add_argument("--guidance_period", type=int, default=D.guidance_period, help="look-ahead / guided steps")
    p.add_argument("--rho", type=float, default=D.rho, help="guidance learning rate")
    p.add_argument("--constraint_value", type=float, default=D.constraint_value, help="L-inf radius eps around z_t")
    p.add_argument("--K", type=int, default=D.K, help="group prototypes per class")
    p.add_argument("--cluster", choices=sorted(CLUSTERING_METHODS), default=D.cluster,
                   help="grouping (default k-means; the authors' code: agglomerative)")
    p.add_argument("--gs", type=float, default=D.gs, help="weight of the class energy D_c")
    p.add_argument("--ls", type=float, default=D.ls, help="weight of the group energy D_g")
    p.add_argument("--optimize_targets", choices=sorted(OPTIMIZE_TARGETS), default=D.optimize_targets,
                   help="prototype levels in the energy (the authors' flag; one level sets the other weight to 0)")
    p.add_argument("--guidance", "--guidance_type", dest="guidance", choices=sorted(GUIDANCE), default=D.guidance,
                   help="transform (DistDiff), direct (ablation), none (plain SD img2img) or gif_sd (the rival "
                        "GIF-SD: a latent perturbation after sampling, scored by the guide; docs/METHOD.md)")
    p.add_argument("--transform_init", choices=[c.value for c in TransformInit], default=D.transform_init,
                   help="where transform guidance's per-channel (e, b) start: the paper's random draw, or the "
                        "identity (an option of ours: no blind draw; docs/METHOD.md#transform-guidance)")
    p.add_argument("--transform_iters", type=int, default=D.transform_iters,
                   help="gradient steps on (e, b) at the guided step (the paper: 1; more is an option of ours)")
    p.add_argument("--transform_resolution", type=int, default=D.transform_resolution,
                   help="transform guidance's scale/bias: one per latent channel (1, the paper) or an R x R field "
                        "per channel, nearest-upsampled to the latent (an option of ours)")
    p.add_argument("--rho_schedule", choices=[c.value for c in RhoSchedule], default=D.rho_schedule,
                   help="direct guidance's step size over its --guidance_period steps: the paper's constant rho, or "
                        "rho decaying linearly / by a half cosine from rho toward 0 (options of ours; "
                        "docs/METHOD.md#direct-guidance)")
    p.add_argument("--gif_eps", type=float, default=D.gif_eps,
                   help="--guidance gif_sd: L-inf radius of the final latent's perturbation (their --constraint_value; "
                        "their README: 0.8 for most natural-image datasets, 4 for Caltech-101, 0.1-0.5 medical)")
    p.add_argument("--gif_step_size", type=float, default=D.gif_step_size,
                   help="--guidance gif_sd: the signed ascent step on the perturbation's scale and bias (theirs: 0.1)")
    p.add_argument("--gif_clip", default=D.gif_clip, metavar="MODEL",
                   help="--guidance gif_sd: score with this CLIP model's zero-shot predictions, as their code does "
                        "(a hub id such as openai/clip-vit-base-patch32, or a local folder), instead of the guide's")
    p.add_argument("--class_tokens", choices=CLASS_TOKENS, default=D.class_tokens,
                   help="the class words of the prompts: the dataset's class names (the paper), or DA-Fusion's "
                        "one token per class learned on the train split by textual inversion (OUT/class_tokens.pt, "
                        "reused on resume), in its prompt 'a photo of a <class>' (docs/METHOD.md)")
    p.add_argument("--inversion_steps", type=int, default=D.inversion_steps,
                   help="--class_tokens learned: textual-inversion steps per class (DA-Fusion's 1000)")
    p.add_argument("--strength_choices", type=float, nargs="+", default=None, metavar="S",
                   help="draw each image's img2img strength from these, equally likely (DA-Fusion: 1.0 0.75 0.5 "
                        "0.25); default: every image at --strength")
    p.add_argument("--candidates", type=int, default=D.candidates,
                   help="make each image this many times (own seeds) and keep the best by --select (an option of "
                        "ours, k times the sampling cost; also with --guidance none; docs/METHOD.md#selection)")
    p.add_argument("--select", choices=sorted(SELECTION_SCORES), default=D.select,
                   help="how --candidates are scored by the guide: energy gs*D_c + ls*D_g (lowest kept) or "
                        "probability of the intended class (highest kept)")
    p.add_argument("--no_transform_feature_norm", action="store_true",
                   help="as the authors' code: do not L2-normalise the guide features inside transform guidance")
    p.add_argument("--raw_guide_input", action="store_true",
                   help="the authors' guide input exactly: the decoded [-1,1] image, no mean/std, resized bicubic "
                        "(no antialias) to 224 px, instead of the prototypes' preprocessing")
    p.add_argument("--start_index", choices=sorted(START_INDEX_FORMULAS), default=D.start_index,
                   help="first img2img step: diffusers' T - int(T*s) or the authors' int((1-s)*T); "
                        "they differ at s=0.8 and 0.9")
    p.add_argument("--local_files_only", action="store_true",
                   help="never download --model: a hub id must already be in the Hugging Face cache")
    p.add_argument("--batch_size", "--train_batch_size", dest="batch_size", type=int, default=D.batch_size,
                   help="images per sampling batch (sources and copies mixed)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=D.precision, help="fp32 is forced on CPU")
    p.add_argument("--gradient_checkpointing", action="store_true", help="less memory for the guidance backward")
    p.add_argument("--seed", type=int, default=D.seed, help="run seed; each image's seed hashes it with its name")
    p.add_argument("--split", type=int, default=D.split, help="which of --total_split independent jobs this is")
    p.add_argument("--total_split", type=int, default=D.total_split, help="number of independent jobs (e.g. one per GPU)")
    p.add_argument("--max_source_images", type=int, default=None, help="expand only N source images (smoke runs)")
    p.add_argument("--data_root", default=D.data_root, help="folder holding the datasets")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's (512 for SD v1.4)")
    p.add_argument("--crop", choices=sorted(SOURCE_CROPS), default=D.crop, help="source image to a square")
    p.add_argument("--cache_dir", default=None, help="VAE latent cache (default: <data_root>/latent_cache)")
    p.add_argument("--no_energy_log", action="store_true",
                   help="skip measuring D_c/D_g for the manifest. Their cost per guided image: one extra "
                        "classifier-free-guided UNet step (26 instead of the 25 sampler steps at the default "
                        "strength 0.5 and 50 steps), two VAE decodes and three guide passes; per unguided image one "
                        "guide pass (EnergyRecorder)")
    p.add_argument("--no_report", action="store_true",
                   help="skip writing OUT/report.html and OUT/report.json at the end (scripts/report.py rebuilds them)")
    add_feature_space_argument(p)
    p.add_argument("--inception_weights", default=None, metavar="FILE",
                   help="local InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth): the report measures "
                        "FID/KID in Inception's features too")
    add_threads_argument(p)
    p.add_argument("--dry_run", action="store_true",
                   help="write nothing and make no image: print the work (sources, copies, images per shard), the "
                        "model calls per image, their FLOPs and the peak memory of one guided step, measured on the "
                        "model's own configuration built on the meta device (no weights read), and GPU time "
                        "estimates (docs/COST.md)")
