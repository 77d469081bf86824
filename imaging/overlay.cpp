#include "imaging/overlay.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>

namespace fedrad::imaging {
namespace {

void put_u32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put_u32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

constexpr std::array<std::array<uint8_t, 3>, 6> kColours = {{
    {230, 40, 40}, {40, 200, 60}, {250, 220, 30}, {40, 110, 250}, {220, 60, 220}, {40, 220, 220}}};

std::array<uint8_t, 3> colour(int label) {
  if (label == 1) return kColours[0];
  if (label == 2) return kColours[1];
  if (label == 3) return kColours[2];
  if (label == 4) return kColours[3];
  return kColours[static_cast<size_t>(label) % kColours.size()];
}

}  // namespace

Status write_png_rgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb) {
  if (width <= 0 || height <= 0 || rgb.size() != static_cast<size_t>(width) * height * 3)
    return invalid_argument(path + ": PNG needs width x height x 3 bytes");
  std::string raw;
  raw.reserve(static_cast<size_t>(height) * (width * 3 + 1));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(rgb.data()) + static_cast<size_t>(y) * width * 3,
               static_cast<size_t>(width) * 3);
  }
  uLongf len = compressBound(raw.size());
  std::string z(len, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &len, reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 6) !=
      Z_OK)
    return internal_error(path + ": zlib failed");
  z.resize(len);
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_u32(ihdr, static_cast<uint32_t>(width));
  put_u32(ihdr, static_cast<uint32_t>(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, no filter, no interlace
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", z);
  chunk(png, "IEND", "");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return io_error(path + ": cannot write");
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  if (!out) return io_error(path + ": write failed");
  return ok_status();
}

Status write_overlay_png(const std::string& path, const Volume& image, const Volume& labels) {
  if (image.size != labels.size || image.voxels.size() != image.count() || labels.voxels.size() != labels.count())
    return invalid_argument(path + ": image and mask differ in size");
  const int nx = image.size[0], ny = image.size[1], nz = image.size[2];
  // Slice positions: the mask's centroid, else the middle.
  double sx = 0, sy = 0, sz = 0, n = 0;
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < ny; ++y)
      for (int x = 0; x < nx; ++x)
        if (labels.at(x, y, z) != 0) {
          sx += x;
          sy += y;
          sz += z;
          n += 1;
        }
  const int cx = n > 0 ? static_cast<int>(sx / n) : nx / 2, cy = n > 0 ? static_cast<int>(sy / n) : ny / 2,
            cz = n > 0 ? static_cast<int>(sz / n) : nz / 2;
  std::vector<float> nonzero;
  for (float v : image.voxels)
    if (v != 0) nonzero.push_back(v);
  if (nonzero.empty()) nonzero = image.voxels;
  std::sort(nonzero.begin(), nonzero.end());
  const float lo = nonzero[nonzero.size() / 100], hi = nonzero[nonzero.size() * 99 / 100];
  const float range = hi > lo ? hi - lo : 1.0f;
  // Panels: axial (x by y at cz), coronal (x by z at cy), sagittal (y by z at cx); superior up.
  const int gap = 4, width = nx + gap + nx + gap + ny, height = std::max(ny, nz);
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3, 0);
  auto put = [&](int px, int py, int x, int y, int z) {
    const float g = std::clamp((image.at(x, y, z) - lo) / range, 0.0f, 1.0f) * 255.0f;
    std::array<float, 3> c{g, g, g};
    const int label = static_cast<int>(std::lround(labels.at(x, y, z)));
    if (label != 0) {
      const auto col = colour(label);
      for (int k = 0; k < 3; ++k) c[k] = 0.45f * c[k] + 0.55f * col[k];
    }
    uint8_t* p = &rgb[(static_cast<size_t>(py) * width + px) * 3];
    for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(c[k]));
  };
  for (int y = 0; y < ny; ++y)
    for (int x = 0; x < nx; ++x) put(x, y, x, y, cz);
  for (int z = 0; z < nz; ++z)
    for (int x = 0; x < nx; ++x) put(nx + gap + x, nz - 1 - z, x, cy, z);
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < ny; ++y) put(2 * (nx + gap) + y, nz - 1 - z, cx, y, z);
  // Small volumes are enlarged (nearest neighbour) to at least 240 pixels high for viewing.
  const int zoom = std::max(1, 240 / height);
  if (zoom == 1) return write_png_rgb(path, width, height, rgb);
  std::vector<uint8_t> big(static_cast<size_t>(width) * zoom * height * zoom * 3);
  for (int y = 0; y < height * zoom; ++y)
    for (int x = 0; x < width * zoom; ++x)
      for (int k = 0; k < 3; ++k)
        big[(static_cast<size_t>(y) * width * zoom + x) * 3 + k] =
            rgb[(static_cast<size_t>(y / zoom) * width + x / zoom) * 3 + k];
  return write_png_rgb(path, width * zoom, height * zoom, big);
}

}  // namespace fedrad::imaging
