"""The napari side of Tessera: the only code that imports napari or Qt."""
