"""int8 post-training quantization of a MobileOne: fake-quantization math (:mod:`.fakequant`),
block-by-block measurement on our nn.Module (:mod:`.measure`), and a real int8 ExecuTorch
program through PT2E (:mod:`.pt2e`); data-free quantization (:mod:`.dfq`: the equalized model
of :mod:`mobileone_cli.fuse.equalize`, and :mod:`.biascorrect`).  The job is
:mod:`mobileone_cli.jobs.quant`."""
