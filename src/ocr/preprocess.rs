//! Image preprocessing: decoding, EXIF orientation, the five resolution modes with Pillow-faithful
//! bicubic resizing and padding, Gundam tiling, and pixel tensors.
