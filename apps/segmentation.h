// The segmentation flows behind the CLI (task: segmentation): a site's learner, the centralised
// or single-site baseline, evaluation, prediction of a mask (NIfTI + PNG overlay) and the
// synthetic multi-site data set. apps/study.cpp dispatches here when the config's task says so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/seg_metrics.h"
#include "common/status.h"
#include "federation/federation.h"
#include "training/checkpoint.h"

namespace fedrad::app {

// {"cases", "mean_dice", "dice": {structure: mean}, "hd95": {structure: mean or null}}, structure
// names from the config (labels, BraTS regions).
nlohmann::json seg_scores_json(const SegScoreSums& sums, const StudyConfig& config);

// Loads SITE_DIR/train and SITE_DIR/val (cases.csv each) and builds the site's SegLearner.
StatusOr<std::unique_ptr<fed::Learner>> make_seg_learner(const StudyConfig& config, const std::string& site_dir,
                                                         const std::string& site_id, int site_index, int threads);

// Baseline on the union of `sites` (train splits), evaluated on their val splits; writes
// model.pt (+ .json), summary.json, per-epoch metrics.jsonl / metrics.csv and config.yaml.
Status train_segmentation(const StudyConfig& config, const std::string& data_root, const std::vector<std::string>& sites,
                          const std::string& out_dir);

// Scores a segmentation model on split folders (cases.csv each): pooled and per folder, per case.
StatusOr<nlohmann::json> evaluate_segmentation(const training::LoadedModel& model, const std::string& model_path,
                                               const std::vector<std::string>& data_dirs);

// One case in (`channels`: the model's input channels in order, NIfTI files or DICOM series
// folders), a mask out: `mask_path` (NIfTI, label values, the first channel's geometry) and
// `overlay_path` (PNG of three slices; "" = none).
Status predict_segmentation(const training::LoadedModel& model, const std::vector<std::string>& channels,
                            const std::string& mask_path, const std::string& overlay_path);

// Writes the three synthetic sites of imaging/synthetic_volume.h under `out_dir`.
Status write_synthetic_seg_sites(const std::string& out_dir, int num_train, int num_val, uint64_t seed);

}  // namespace fedrad::app
