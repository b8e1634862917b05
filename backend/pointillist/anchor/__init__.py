"""What the portrait and its fitted head give an avatar for free: the face surface, its colours, their mirror."""

from .photo_anchor import AnchorOptions, anchor_to_photo

__all__ = ["AnchorOptions", "anchor_to_photo"]
