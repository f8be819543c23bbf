#include "launch/hf_rope_config.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/number_text.h"
#include "core/status.h"

namespace msa {
namespace {

// Values that differ never print alike in an error message.
std::string num(double v) { return shortest_text(v); }

// A value and the config.json field it came from ("rope_theta", "rope_parameters.factor", ...).
template <class V>
struct Sourced {
  V value;
  std::string field;
};

// What one RoPE object (rope_scaling, rope_parameters, or one per-attention-type entry of it) says.
struct RopeObject {
  std::string field;          // the object's own name
  Sourced<std::string> type;  // "default" (field = the object) when it names none
  std::optional<Sourced<double>> theta, partial, factor, low, high, original;
};

const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {
      "type",   "rope_type",       "rope_theta",       "partial_rotary_factor",
      "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
  return keys;
}

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {}

  absl::Status error(const std::string& field, const std::string& why) const {
    return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' %s", path_, field, why));
  }

  static std::string describe(const nlohmann::json& v) {
    std::string d = v.dump();
    if (d.size() > 40) d = d.substr(0, 37) + "...";
    return absl::StrFormat("%s (%s)", d, v.type_name());
  }

  // obj[key] as a finite number, or nullopt when absent or null.
  absl::StatusOr<std::optional<Sourced<double>>> number(const nlohmann::json& obj,
                                                        const std::string& key,
                                                        const std::string& field) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    if (!it->is_number()) return error(field, "is " + describe(*it) + ", not a number");
    const double v = it->get<double>();
    if (!std::isfinite(v)) return error(field, absl::StrFormat("is %g, not finite", v));
    return Sourced<double>{v, field};
  }

  absl::StatusOr<RopeObject> object(const nlohmann::json& obj, const std::string& field) const {
    RopeObject r;
    r.field = field;
    r.type = {"default", field};
    std::optional<Sourced<std::string>> type, rope_type;
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      const std::string name = field + "." + it.key();
      if (it->is_null()) continue;  // null is absent, for every key
      if (!known_keys().count(it.key()))
        return error(name,
                     "is not a RoPE parameter msa-convert implements (rope types default, "
                     "linear and llama3; docs/convert.md)");
      if (it.key() == "type" || it.key() == "rope_type") {
        if (!it->is_string()) return error(name, "is " + describe(*it) + ", not a string");
        (it.key() == "type" ? type : rope_type) =
            Sourced<std::string>{it->get<std::string>(), name};
      }
    }
    if (type && rope_type && type->value != rope_type->value)
      return error(rope_type->field, absl::StrFormat("is '%s', but field '%s' is '%s'",
                                                     rope_type->value, type->field, type->value));
    if (rope_type)
      r.type = *rope_type;
    else if (type)
      r.type = *type;
    MSA_ASSIGN_OR_RETURN(r.theta, number(obj, "rope_theta", field + ".rope_theta"));
    MSA_ASSIGN_OR_RETURN(r.partial,
                         number(obj, "partial_rotary_factor", field + ".partial_rotary_factor"));
    MSA_ASSIGN_OR_RETURN(r.factor, number(obj, "factor", field + ".factor"));
    MSA_ASSIGN_OR_RETURN(r.low, number(obj, "low_freq_factor", field + ".low_freq_factor"));
    MSA_ASSIGN_OR_RETURN(r.high, number(obj, "high_freq_factor", field + ".high_freq_factor"));
    MSA_ASSIGN_OR_RETURN(r.original, number(obj, "original_max_position_embeddings",
                                            field + ".original_max_position_embeddings"));
    return r;
  }

  // The one value of several sources (nullopt when none has it); sources that disagree are an
  // error naming two of them.
  absl::StatusOr<std::optional<Sourced<double>>> agree(
      const std::vector<std::optional<Sourced<double>>>& sources) const {
    std::optional<Sourced<double>> first;
    for (const auto& s : sources) {
      if (!s) continue;
      if (!first) {
        first = s;
      } else if (s->value != first->value) {
        return error(first->field,
                     absl::StrFormat("is %s, but field '%s' is %s (the two spellings disagree)",
                                     num(first->value), s->field, num(s->value)));
      }
    }
    return first;
  }

 private:
  const std::string& path_;
};

bool same(const std::optional<Sourced<double>>& a, const std::optional<Sourced<double>>& b) {
  return a.has_value() == b.has_value() && (!a || a->value == b->value);
}

bool same_rope(const RopeObject& a, const RopeObject& b) {
  return a.type.value == b.type.value && same(a.theta, b.theta) && same(a.partial, b.partial) &&
         same(a.factor, b.factor) && same(a.low, b.low) && same(a.high, b.high) &&
         same(a.original, b.original);
}

}  // namespace

absl::StatusOr<RopeConfig> parse_hf_rope(const nlohmann::json& j, int64_t head_dim,
                                         bool partial_rotary, const std::string& path) {
  const Reader in(path);
  // The RoPE objects present: rope_scaling (transformers 4), rope_parameters (transformers 5).
  std::vector<RopeObject> objects;
  for (const char* name : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(name);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_object())
      return in.error(name, "is " + Reader::describe(*it) + ", not an object or null");
    // Nested per attention type when every entry is an object: one RoPE for all layers is what
    // msa-train implements, so the entries must agree.
    bool nested = !it->empty();
    for (const auto& v : *it) nested = nested && v.is_object();
    if (!nested) {
      MSA_ASSIGN_OR_RETURN(RopeObject o, in.object(*it, name));
      objects.push_back(o);
      continue;
    }
    std::optional<RopeObject> first;
    for (auto e = it->begin(); e != it->end(); ++e) {
      MSA_ASSIGN_OR_RETURN(RopeObject o, in.object(*e, std::string(name) + "." + e.key()));
      if (first && !same_rope(*first, o))
        return in.error(o.field, "differs from field '" + first->field +
                                     "' (RoPE per attention type is not supported)");
      if (!first) first = o;
    }
    objects.push_back(*first);
  }

  // The rope type, which every object present must name alike.
  Sourced<std::string> type{"default", ""};
  for (const RopeObject& o : objects) {
    if (type.field.empty()) {
      type = o.type;
    } else if (o.type.value != type.value) {
      return in.error(type.field, absl::StrFormat("says rope_type '%s', but field '%s' says '%s' "
                                                  "(the two spellings disagree)",
                                                  type.value, o.type.field, o.type.value));
    }
  }
  RopeConfig rope;
  if (type.value == "linear") {
    rope.scaling.type = RopeScalingType::kLinear;
  } else if (type.value == "llama3") {
    rope.scaling.type = RopeScalingType::kLlama3;
  } else if (type.value != "default") {
    return in.error(type.field, "is '" + type.value +
                                    "' (msa-convert implements the rope types default, linear and "
                                    "llama3; yarn, dynamic, longrope and the others are refused)");
  }

  // Each value from every place it may be given.
  std::vector<std::optional<Sourced<double>>> thetas, partials, factors, lows, highs, originals;
  MSA_ASSIGN_OR_RETURN(auto top_theta, in.number(j, "rope_theta", "rope_theta"));
  MSA_ASSIGN_OR_RETURN(auto top_partial,
                       in.number(j, "partial_rotary_factor", "partial_rotary_factor"));
  MSA_ASSIGN_OR_RETURN(auto top_original, in.number(j, "original_max_position_embeddings",
                                                    "original_max_position_embeddings"));
  thetas.push_back(top_theta);
  partials.push_back(top_partial);
  // Outside a llama3 object it is the context length alone (Phi-3 style), which plain RoPE does
  // not use; it is still type-checked above.
  if (rope.scaling.type == RopeScalingType::kLlama3) originals.push_back(top_original);
  for (const RopeObject& o : objects) {
    thetas.push_back(o.theta);
    partials.push_back(o.partial);
    factors.push_back(o.factor);
    lows.push_back(o.low);
    highs.push_back(o.high);
    originals.push_back(o.original);
  }
  MSA_ASSIGN_OR_RETURN(auto theta, in.agree(thetas));
  MSA_ASSIGN_OR_RETURN(auto partial, in.agree(partials));
  MSA_ASSIGN_OR_RETURN(auto factor, in.agree(factors));
  MSA_ASSIGN_OR_RETURN(auto low, in.agree(lows));
  MSA_ASSIGN_OR_RETURN(auto high, in.agree(highs));
  MSA_ASSIGN_OR_RETURN(auto original, in.agree(originals));

  // What the type uses must be there; what it does not use must not be.
  auto required = [&](const std::optional<Sourced<double>>& v, const char* key) -> absl::Status {
    if (v) return absl::OkStatus();
    return in.error(objects.front().field + "." + key,
                    "is missing (rope_type '" + type.value + "' needs it)");
  };
  auto unused = [&](const std::optional<Sourced<double>>& v) -> absl::Status {
    if (!v) return absl::OkStatus();
    return in.error(
        v->field, "is set, but rope_type '" + type.value + "' does not use it (refusing to guess)");
  };
  auto positive = [&](const Sourced<double>& v) -> absl::Status {
    if (v.value > 0) return absl::OkStatus();
    return in.error(v.field, absl::StrFormat("is %s, must be > 0", num(v.value)));
  };
  if (theta) {
    MSA_RETURN_IF_ERROR(positive(*theta));
    rope.theta = theta->value;
  }
  switch (rope.scaling.type) {
    case RopeScalingType::kNone:
      for (const auto* v : {&factor, &low, &high, &original}) MSA_RETURN_IF_ERROR(unused(*v));
      break;
    case RopeScalingType::kLinear:
      MSA_RETURN_IF_ERROR(required(factor, "factor"));
      for (const auto* v : {&low, &high, &original}) MSA_RETURN_IF_ERROR(unused(*v));
      break;
    case RopeScalingType::kLlama3:
      MSA_RETURN_IF_ERROR(required(factor, "factor"));
      MSA_RETURN_IF_ERROR(required(low, "low_freq_factor"));
      MSA_RETURN_IF_ERROR(required(high, "high_freq_factor"));
      MSA_RETURN_IF_ERROR(required(original, "original_max_position_embeddings"));
      MSA_RETURN_IF_ERROR(positive(*low));
      MSA_RETURN_IF_ERROR(positive(*original));
      if (!(high->value > low->value))
        return in.error(high->field, absl::StrFormat("is %s, must be > low_freq_factor (%s)",
                                                     num(high->value), num(low->value)));
      rope.scaling.low_freq_factor = low->value;
      rope.scaling.high_freq_factor = high->value;
      rope.scaling.original_max_position = original->value;
      break;
  }
  if (factor) {
    MSA_RETURN_IF_ERROR(positive(*factor));
    rope.scaling.factor = factor->value;
  }

  if (partial) {
    if (!(partial->value > 0 && partial->value <= 1))
      return in.error(partial->field,
                      absl::StrFormat("is %s, must be in (0, 1]", num(partial->value)));
    // transformers: rotary_dim = int(head_dim * partial_rotary_factor).
    const auto rotary_dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial->value);
    if (rotary_dim != head_dim) {
      if (!partial_rotary)
        return in.error(partial->field,
                        absl::StrFormat("is %s (rotary_dim %d of head_dim %d), but transformers' "
                                        "implementation of this architecture rotates the whole "
                                        "head whatever it says; refusing rather than guess",
                                        num(partial->value), rotary_dim, head_dim));
      if (rotary_dim < 2 || rotary_dim % 2 != 0)
        return in.error(
            partial->field,
            absl::StrFormat("is %s: rotary_dim = int(%d * %s) = %d must be even and "
                            ">= 2",
                            num(partial->value), head_dim, num(partial->value), rotary_dim));
      rope.rotary_dim = rotary_dim;
    }
  }
  if (absl::Status s = validate_rope(rope, head_dim); !s.ok())
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", path, s.message()));
  return rope;
}

std::string describe_rope(const RopeConfig& rope, int64_t head_dim) {
  const RopeScaling& s = rope.scaling;
  std::string scaling = rope_scaling_type_name(s.type);
  if (s.type == RopeScalingType::kLinear) scaling += absl::StrFormat(" (factor %g)", s.factor);
  if (s.type == RopeScalingType::kLlama3)
    scaling += absl::StrFormat(" (factor %g, low %g, high %g, original %g)", s.factor,
                               s.low_freq_factor, s.high_freq_factor, s.original_max_position);
  return absl::StrFormat("theta %g, %s, rotary %d/%d", rope.theta, scaling,
                         rope_rotary_dim(rope, head_dim), head_dim);
}

absl::Status write_hf_rope(const RopeConfig& rope, int64_t head_dim, bool partial_rotary,
                           nlohmann::ordered_json& config) {
  MSA_RETURN_IF_ERROR(validate_rope(rope, head_dim));
  const int64_t rotary_dim = rope_rotary_dim(rope, head_dim);
  std::optional<double> partial;
  if (rotary_dim != head_dim) {
    if (!partial_rotary)
      return absl::InvalidArgumentError(absl::StrFormat(
          "export: partial rotary (rotary_dim %d of head_dim %d) cannot be written for this "
          "architecture: transformers rotates its whole head",
          rotary_dim, head_dim));
    // The factor whose int(head_dim * factor) gives back rotary_dim.
    double f = static_cast<double>(rotary_dim) / static_cast<double>(head_dim);
    while (static_cast<int64_t>(static_cast<double>(head_dim) * f) < rotary_dim)
      f = std::nextafter(f, 2.0);
    partial = f;
  }
  nlohmann::ordered_json scaling = nullptr;
  const RopeScaling& s = rope.scaling;
  if (s.type != RopeScalingType::kNone) {
    scaling = nlohmann::ordered_json::object();
    scaling["rope_type"] = rope_scaling_type_name(s.type);
    scaling["factor"] = s.factor;
    if (s.type == RopeScalingType::kLlama3) {
      scaling["low_freq_factor"] = s.low_freq_factor;
      scaling["high_freq_factor"] = s.high_freq_factor;
      // transformers expects an integer here; a fractional one is kept exactly as a double.
      if (s.original_max_position == std::floor(s.original_max_position) &&
          s.original_max_position < 9e15)
        scaling["original_max_position_embeddings"] = static_cast<int64_t>(s.original_max_position);
      else
        scaling["original_max_position_embeddings"] = s.original_max_position;
    }
  }
  nlohmann::ordered_json params = nlohmann::ordered_json::object();
  params["rope_theta"] = rope.theta;
  params["rope_type"] = rope_scaling_type_name(s.type);
  if (!scaling.is_null())
    for (auto it = scaling.begin(); it != scaling.end(); ++it)
      if (it.key() != "rope_type") params[it.key()] = it.value();
  config["rope_theta"] = rope.theta;
  config["rope_scaling"] = scaling;
  if (partial) {
    config["partial_rotary_factor"] = *partial;
    params["partial_rotary_factor"] = *partial;
  }
  config["rope_parameters"] = params;
  return absl::OkStatus();
}

}  // namespace msa
