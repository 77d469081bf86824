// A quick-look PNG of a segmentation: three orthogonal slices (axial, coronal, sagittal) of an
// image with its label mask blended in colour, side by side. PNG written with zlib (no other
// image library). Slices go through the mask's centroid when the mask is non-empty, otherwise
// through the middle of the volume. Grey levels: the image's 1st..99th percentile over non-zero
// voxels. Pixels are voxels (no aspect correction for anisotropic spacing), enlarged to at least
// 240 pixels high.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "imaging/volume.h"

namespace fedrad::imaging {

// 8-bit RGB, rows top to bottom.
Status write_png_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb);

// `labels` holds label values (same size as `image`); each non-zero value gets its own colour
// (1 red, 2 green, 3 and 4 yellow/blue, others cycle).
Status write_overlay_png(const std::string& path, const Volume& image, const Volume& labels);

}  // namespace fedrad::imaging
