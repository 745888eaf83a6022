"""Write a training checkpoint with a real ``mmengine.runner.Runner`` (run as a script by the
tests, so the Runner's process-wide settings stay out of the test process).

    python tests/mmengine_runner.py INIT.pth WORK_DIR

The model is mmpretrain's ImageClassifier as a state dict sees it: the tensors of the test
suite's own MobileOne (models.mobileone, Apple names) registered a second time under
mmpretrain's names (``backbone.stage0.branch_conv_list.0.conv.weight``...), the same Parameter
and buffer objects.  So the Runner's optimizer, parameter schedulers, ``EMAHook`` and
``CheckpointHook`` are mmengine's own, and the file they write holds an mmpretrain-layout
MobileOne, starting from the weights in INIT.pth (mmpretrain layout, train form).

After training it also saves ``WORK_DIR/live.pth``: the EMA and raw weights taken from the live
objects (the EMA hook's averaged model, the model), to check the file against.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.arch.specs import ArchSpec
from mobileone_cli.arch.layouts import key_map, remap

# The small custom MobileOne of tests/fixtures/mmpretrain (make_mmpretrain_fixtures.ARCH).
ARCH = ArchSpec(name="custom", stem_channels=16, widths=(16, 32, 64, 64), blocks=(1, 1, 2, 1),
                conv_branches=(2, 1, 3, 1), se_blocks=(0, 0, 1, 1), num_classes=10,
                se_ratio=0.125)


def _register() -> None:
    from mmengine.model import BaseModel
    from mmengine.registry import DATASETS, MODELS

    class MobileOneTree(BaseModel):
        def __init__(self, init_path: str) -> None:
            super().__init__()
            net = MobileOne(ARCH)
            sd = torch.load(init_path, map_location="cpu", weights_only=True)
            net.load_state_dict(remap(sd, ARCH, "mmpretrain", "apple", "train"), strict=True)
            params = dict(net.named_parameters())
            buffers = dict(net.named_buffers())
            for apple, mm in key_map(ARCH, "apple", "mmpretrain", "train").items():
                *path, leaf = mm.split(".")
                mod = self
                for name in path:
                    if not hasattr(mod, name):
                        mod.add_module(name, torch.nn.Module())
                    mod = getattr(mod, name)
                if apple in params:
                    mod.register_parameter(leaf, params[apple])
                else:
                    mod.register_buffer(leaf, buffers[apple])
            self.__dict__["net"] = net  # not a submodule: its tensors are registered above

        def forward(self, inputs, data_samples=None, mode="tensor"):
            self.net.train(self.training)
            logits = self.net(inputs)
            if mode == "loss":
                return {"loss": F.cross_entropy(logits, data_samples)}
            return logits

    class RandomImages(torch.utils.data.Dataset):
        metainfo = dict(classes=tuple(f"class{i}" for i in range(ARCH.num_classes)))

        def __init__(self, n: int = 8) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 3, 32, 32, generator=g)
            self.y = torch.randint(0, ARCH.num_classes, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i):
            return dict(inputs=self.x[i], data_samples=self.y[i])

    MODELS.register_module(name="MobileOneTree", module=MobileOneTree, force=True)
    DATASETS.register_module(name="RandomImages", module=RandomImages, force=True)


def main(init_path: str, work_dir: str) -> None:
    from mmengine.config import Config
    from mmengine.runner import Runner

    torch.set_num_threads(1)  # a tiny network: more threads only contend for the cores
    _register()
    cfg = Config(dict(
        model=dict(type="MobileOneTree", init_path=init_path), work_dir=work_dir,
        experiment_name="mobileone_test",
        train_dataloader=dict(dataset=dict(type="RandomImages"),
                              sampler=dict(type="DefaultSampler", shuffle=True),
                              collate_fn=dict(type="default_collate"), batch_size=4,
                              num_workers=0),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9,
                                          weight_decay=1e-4)),
        param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2),
                         dict(type="CosineAnnealingLR", T_max=1, by_epoch=True, begin=0, end=1)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[dict(type="EMAHook", momentum=0.3, priority="ABOVE_NORMAL")],
        randomness=dict(seed=0), default_scope="mmengine", log_level="WARNING"))
    runner = Runner.from_cfg(cfg)
    runner.train()
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == "EMAHook")
    torch.save({"ema": dict(ema_hook.ema_model.module.state_dict()),
                "raw": dict(runner.model.state_dict())}, os.path.join(work_dir, "live.pth"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
