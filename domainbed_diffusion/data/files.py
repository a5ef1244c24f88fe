"""Image files: the project's one PNG writer (atomic) and reader (RGB)."""
import os

from PIL import Image


def save_png(image, path):
    """Write a PIL image atomically: readers never see a half-written file (``.tmp`` names are ignored). Used for
    synthetic images, DigitStyles and preview grids alike."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def load_rgb(path):
    with Image.open(path) as img:
        return img.convert("RGB")
