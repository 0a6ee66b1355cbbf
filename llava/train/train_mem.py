"""Training entry point with LLaMA attention through PyTorch's scaled_dot_product_attention.

LLaVA's `train_mem.py` needs the flash-attn package; this one uses torch's own SDPA kernels (flash kernels
on CUDA for unpadded batches) and runs unchanged on a CPU. Same flags as `llava.train.train`.
"""

from llava.train.train import train

if __name__ == "__main__":
    train(attn_implementation="sdpa")
