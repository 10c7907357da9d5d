"""Pretext tasks: turn unlabeled images, videos, 3D scenes and GUI screens into verifiable Samples."""
