// Splits one BraTS case into two cases along z for bench/segmentation.sh: the tumour-bearing
// slices are halved at their median slice; the lower part (with every slice below it) becomes
// OUT/brats/train/lower, the upper part OUT/brats/val/upper, each with a cases.csv, so that
// `fedrad train` learns on one half of the tumour and is scored on the other.
//   brats_split_bench CASE_DIR OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "imaging/volume.h"

namespace fs = std::filesystem;
using fedrad::imaging::Volume;

static Volume slab(const Volume& v, int z0, int z1) {  // slices [z0, z1)
  Volume out = v;
  out.size[2] = z1 - z0;
  for (int k = 0; k < 3; ++k) out.origin[k] = v.origin[k] + v.direction[k * 3 + 2] * v.spacing[2] * z0;
  const size_t plane = static_cast<size_t>(v.size[0]) * v.size[1];
  out.voxels.assign(v.voxels.begin() + plane * z0, v.voxels.begin() + plane * z1);
  return out;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASE_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string in = argv[1], out = argv[2];
  const std::vector<std::string> channels = {"t1n", "t1c", "t2w", "t2f"};
  auto mask = fedrad::imaging::read_nifti(in + "/seg-BraTS23_1_mapped.nii.gz");
  if (!mask.ok()) {
    std::fprintf(stderr, "%s\n", mask.status().to_string().c_str());
    return 1;
  }
  const size_t plane = static_cast<size_t>(mask->size[0]) * mask->size[1];
  std::vector<int> tumour_slices;
  for (int z = 0; z < mask->size[2]; ++z) {
    size_t n = 0;
    for (size_t i = 0; i < plane; ++i) n += mask->voxels[plane * z + i] != 0;
    if (n > 0) tumour_slices.push_back(z);
  }
  if (tumour_slices.size() < 2) {
    std::fprintf(stderr, "%s: fewer than two tumour-bearing slices\n", in.c_str());
    return 1;
  }
  const int split = tumour_slices[tumour_slices.size() / 2];
  std::printf("{\"slices\": %d, \"tumour_slices\": %zu, \"first\": %d, \"last\": %d, \"split\": %d}\n", mask->size[2],
              tumour_slices.size(), tumour_slices.front(), tumour_slices.back(), split);
  struct Part {
    const char* split;
    const char* name;
    int z0, z1;
  };
  for (const Part& p : {Part{"train", "lower", 0, split}, Part{"val", "upper", split, mask->size[2]}}) {
    const fs::path dir = fs::path(out) / "brats" / p.split;
    fs::create_directories(dir / p.name);
    std::ofstream csv(dir / "cases.csv");
    csv << "case";
    for (const auto& c : channels) csv << "," << c;
    csv << ",mask\n" << p.name;
    for (const auto& c : channels) {
      auto v = fedrad::imaging::read_nifti(in + "/" + c + ".nii.gz");
      if (!v.ok()) {
        std::fprintf(stderr, "%s\n", v.status().to_string().c_str());
        return 1;
      }
      const std::string rel = std::string(p.name) + "/" + c + ".nii.gz";
      if (!fedrad::imaging::write_nifti((dir / rel).string(), slab(*v, p.z0, p.z1)).ok()) return 1;
      csv << "," << rel;
    }
    const std::string rel = std::string(p.name) + "/seg.nii.gz";
    if (!fedrad::imaging::write_nifti((dir / rel).string(), slab(*mask, p.z0, p.z1),
                                      fedrad::imaging::VoxelType::kUInt8)
             .ok())
      return 1;
    csv << "," << rel << "\n";
  }
  return 0;
}
