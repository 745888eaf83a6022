"""int8 post-training quantization of a MobileOne: fake-quantization math (:mod:`.fakequant`),
block-by-block measurement on our nn.Module (:mod:`.measure`), and a real int8 ExecuTorch
program through PT2E (:mod:`.pt2e`).  The job is :mod:`mobileone_cli.jobs.quant`."""
