"""The PyTorch/DeepSpeed reference backend of jax-sft. Never imports jax.

`engine, optimizer, dataloader, lr_scheduler = torch_ref.initialize(...)` is DeepSpeed's
own engine set up from `jax_sft.initialize`'s keywords (`torch_ref.train.api`);
`torch-ref` is the command line. torch and DeepSpeed are imported only when used.
"""


def initialize(*args, **kwargs):
    """See `torch_ref.train.api.initialize`."""
    from torch_ref.accelerator import default_to_cpu

    default_to_cpu()
    from torch_ref.train.api import initialize as deepspeed_initialize

    return deepspeed_initialize(*args, **kwargs)
