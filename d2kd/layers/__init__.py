"""Pure-PyTorch building blocks (no Detectron2 import): box ops and loss math shared by methods."""
