"""
Pure-PyTorch parts of DETR-type detectors (no Detectron2 import).

``ms_deform_attn`` (multi-scale deformable attention with ``grid_sample``), ``multiscale`` (input
projections and masks), ``position_encoding``, ``transformer`` (deformable encoder/decoder),
``heads`` (class/box heads), ``matcher`` (Hungarian), ``criterion`` (set loss) and ``outputs``
(what a DETR returns to distillation). DETRDistill's math is in ``d2kd.methods.detrdistill``.
Import them as ``d2kd.layers.detr.<module>``. Box conversions, IoU / GIoU (called with DETR's eps
convention: ``DETR_EPS``, ``floor_areas=False``) and ``inverse_sigmoid`` come from
``d2kd.layers.box_ops``.
"""
