"""Object detection: box geometry and NMS in pure torch (horizontal and rotated boxes), the FCOS
detector on the ViT pyramid, its target assignment and losses, and the detection metrics."""
