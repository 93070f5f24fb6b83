"""GIF-SD's score and latent update, transcribed verbatim from the authors' code for the equality test.

Source: github.com/Vanint/DatasetExpansion at 554e608988d0ec57e8d3ca7cbfab5d5c239ffde7,
GIF_SD/Caltech/dataset_expansion_stable_diffusion_CLIP_batch_optimization.py (the same lines appear
in the other datasets' *_batch_optimization*.py files). Each block is copied unchanged but for its
indentation; tests/test_gif.py executes them with stand-ins for the models (`.cuda()` as the
identity, a small differentiable decoder and image encoder in place of the LDM and CLIP).
"""

# lines 371-384: the L-inf projection
HELPERS = """
def tensor_clamp(t, min, max, in_place=True):
    if not in_place:
        res = t.clone()
    else:
        res = t
    idx = res.data < min
    res.data[idx] = min[idx]
    idx = res.data > max
    res.data[idx] = max[idx]

    return res

def linfball_proj(center, radius, t, in_place=True):
    return tensor_clamp(t, min=center - radius, max=center + radius, in_place=in_place)
"""

# lines 535-540: the CLIP zero-shot prediction on the source image (`original_inputs`)
SOURCE_PREDICTION = """
image_original_features = model.encode_image(original_inputs).float().detach()
image_original_features = image_original_features/image_original_features.norm(dim=-1, keepdim=True)
original_outputs = (100.0 * image_original_features @ text_classifier.T)
original_output_prob = original_outputs.softmax(dim=-1)
original_output_index = original_output_prob.argmax(dim=1)
original_output_entropy = -(original_output_prob * torch.log(original_output_prob)).sum(dim=1)
"""

# lines 555-593: perturb the sampled latents, score, one signed step on (e, b), perturb again and project
SCORE_AND_UPDATE = """
samples_temp = samples.clone().cuda()
channel_noise_dim =  samples_temp.shape[1]


channel_noise = Variable(torch.rand([expanded_number_per_sample_each_epoch,channel_noise_dim, 1,1]),  requires_grad=True).cuda()
channel_noise_bias =  Variable(torch.zeros([expanded_number_per_sample_each_epoch,channel_noise_dim, 1,1]).data.normal_(0, 1),  requires_grad=True).cuda()
samples_temp = samples_temp * (1 + channel_noise) + channel_noise_bias

x_samples = GIF_model.decode_first_stage(samples_temp)
x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
augmented_inputs1 = core.imresize(x_samples, sizes=(224, 224))
image_augmented_features = model.encode_image(augmented_inputs1).float()
image_augmented_features = image_augmented_features/image_augmented_features.norm(dim=-1, keepdim=True)
augmented_output_prob = (100.0 * image_augmented_features @  text_classifier.T).softmax(dim=-1)
augmented_output_entropy = -(augmented_output_prob * torch.log(augmented_output_prob)).sum(dim=1)

delta_entropy = augmented_output_entropy   - original_output_entropy
delta_entropy = delta_entropy.mean()
original_output_index1 =  original_output_index.unsqueeze(1)
augmented_output_prob_top1 = torch.gather(augmented_output_prob,1,original_output_index1).mean()

mean_image_augmented_features = torch.mean(image_augmented_features, 0, keepdim=True).repeat([expanded_number_per_sample_each_epoch,1])
image_augmented_features =  F.log_softmax(image_augmented_features)
target_mean_image_augmented_features = F.log_softmax(mean_image_augmented_features)
divergence =  kl_loss(image_augmented_features, target_mean_image_augmented_features)

Score = delta_entropy + augmented_output_prob_top1 + divergence


(channel_noise_grad, channel_noise_bias_grad) = torch.autograd.grad(Score, [channel_noise, channel_noise_bias])

channel_noise.data.add_(0.1 * torch.sign(channel_noise_grad))
channel_noise_bias.data.add_(0.1 * torch.sign(channel_noise_bias_grad))
del samples_temp, x_samples, augmented_inputs1, image_augmented_features, augmented_output_prob, augmented_output_entropy, delta_entropy, augmented_output_prob_top1, divergence, channel_noise_grad, channel_noise_bias_grad

with torch.no_grad():
    samples_temp = samples.clone().cuda()
    samples = samples * (1 + channel_noise) + channel_noise_bias
    linfball_proj(samples_temp, args.constraint_value, samples, in_place=True)
"""
