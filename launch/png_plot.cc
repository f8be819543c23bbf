#include "launch/png_plot.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>

#include "absl/strings/str_format.h"
#include "core/check.h"

namespace msa {
namespace {

// 5x7 glyphs, one byte per column (left to right), bit r = row r from the top (the classic
// HD44780-style font). Lowercase letters reuse the capitals.
struct Glyph {
  char c;
  uint8_t columns[5];
};
constexpr Glyph kFont[] = {
    {' ', {0x00, 0x00, 0x00, 0x00, 0x00}}, {'0', {0x3E, 0x51, 0x49, 0x45, 0x3E}},
    {'1', {0x00, 0x42, 0x7F, 0x40, 0x00}}, {'2', {0x42, 0x61, 0x51, 0x49, 0x46}},
    {'3', {0x21, 0x41, 0x45, 0x4B, 0x31}}, {'4', {0x18, 0x14, 0x12, 0x7F, 0x10}},
    {'5', {0x27, 0x45, 0x45, 0x45, 0x39}}, {'6', {0x3C, 0x4A, 0x49, 0x49, 0x30}},
    {'7', {0x01, 0x71, 0x09, 0x05, 0x03}}, {'8', {0x36, 0x49, 0x49, 0x49, 0x36}},
    {'9', {0x06, 0x49, 0x49, 0x29, 0x1E}}, {'A', {0x7E, 0x11, 0x11, 0x11, 0x7E}},
    {'B', {0x7F, 0x49, 0x49, 0x49, 0x36}}, {'C', {0x3E, 0x41, 0x41, 0x41, 0x22}},
    {'D', {0x7F, 0x41, 0x41, 0x22, 0x1C}}, {'E', {0x7F, 0x49, 0x49, 0x49, 0x41}},
    {'F', {0x7F, 0x09, 0x09, 0x09, 0x01}}, {'G', {0x3E, 0x41, 0x49, 0x49, 0x7A}},
    {'H', {0x7F, 0x08, 0x08, 0x08, 0x7F}}, {'I', {0x00, 0x41, 0x7F, 0x41, 0x00}},
    {'J', {0x20, 0x40, 0x41, 0x3F, 0x01}}, {'K', {0x7F, 0x08, 0x14, 0x22, 0x41}},
    {'L', {0x7F, 0x40, 0x40, 0x40, 0x40}}, {'M', {0x7F, 0x02, 0x0C, 0x02, 0x7F}},
    {'N', {0x7F, 0x04, 0x08, 0x10, 0x7F}}, {'O', {0x3E, 0x41, 0x41, 0x41, 0x3E}},
    {'P', {0x7F, 0x09, 0x09, 0x09, 0x06}}, {'Q', {0x3E, 0x41, 0x51, 0x21, 0x5E}},
    {'R', {0x7F, 0x09, 0x19, 0x29, 0x46}}, {'S', {0x46, 0x49, 0x49, 0x49, 0x31}},
    {'T', {0x01, 0x01, 0x7F, 0x01, 0x01}}, {'U', {0x3F, 0x40, 0x40, 0x40, 0x3F}},
    {'V', {0x1F, 0x20, 0x40, 0x20, 0x1F}}, {'W', {0x3F, 0x40, 0x38, 0x40, 0x3F}},
    {'X', {0x63, 0x14, 0x08, 0x14, 0x63}}, {'Y', {0x07, 0x08, 0x70, 0x08, 0x07}},
    {'Z', {0x61, 0x51, 0x49, 0x45, 0x43}}, {'-', {0x08, 0x08, 0x08, 0x08, 0x08}},
    {'_', {0x40, 0x40, 0x40, 0x40, 0x40}}, {'.', {0x00, 0x60, 0x60, 0x00, 0x00}},
    {',', {0x00, 0x50, 0x30, 0x00, 0x00}}, {':', {0x00, 0x36, 0x36, 0x00, 0x00}},
    {'/', {0x20, 0x10, 0x08, 0x04, 0x02}}, {'(', {0x00, 0x1C, 0x22, 0x41, 0x00}},
    {')', {0x00, 0x41, 0x22, 0x1C, 0x00}}, {'[', {0x00, 0x7F, 0x41, 0x41, 0x00}},
    {']', {0x00, 0x41, 0x41, 0x7F, 0x00}}, {'%', {0x23, 0x13, 0x08, 0x64, 0x62}},
    {'+', {0x08, 0x08, 0x3E, 0x08, 0x08}}, {'=', {0x14, 0x14, 0x14, 0x14, 0x14}},
    {'<', {0x08, 0x14, 0x22, 0x41, 0x00}}, {'>', {0x00, 0x41, 0x22, 0x14, 0x08}},
    {'*', {0x14, 0x08, 0x3E, 0x08, 0x14}}, {'#', {0x14, 0x7F, 0x14, 0x7F, 0x14}},
};
constexpr uint8_t kBox[5] = {0x7F, 0x41, 0x41, 0x41, 0x7F};

const uint8_t* glyph(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  for (const Glyph& g : kFont)
    if (g.c == c) return g.columns;
  return kBox;
}

constexpr Rgb kPalette[] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                            {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127}};
constexpr Rgb kGrid{225, 225, 225};
constexpr Rgb kLegendBorder{160, 160, 160};

// A 1-2-5 step giving about `target` intervals over `range`.
double nice_step(double range, int target) {
  const double raw = range / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

std::string power_of_two_label(int k) {
  if (k < 0) return absl::StrFormat("1/%d", 1 << std::min(-k, 30));
  if (k < 10) return absl::StrFormat("%d", 1 << k);
  if (k < 20) return absl::StrFormat("%dK", 1 << (k - 10));
  if (k < 30) return absl::StrFormat("%dM", 1 << (k - 20));
  return absl::StrFormat("%dG", 1LL << (k - 30));
}

struct Tick {
  double value;  // in axis units (log2 of x on a log axis)
  std::string label;
};

// Ticks at multiples of a nice step covering [lo, hi]; widens [lo, hi] to the outer ticks.
std::vector<Tick> linear_ticks(double& lo, double& hi) {
  const double step = nice_step(hi - lo, 5);
  lo = std::floor(lo / step) * step;
  hi = std::ceil(hi / step) * step;
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  const int n = static_cast<int>(std::lround((hi - lo) / step));
  std::vector<Tick> ticks;
  for (int i = 0; i <= n; ++i) {
    const double v = lo + i * step;
    ticks.push_back({v, absl::StrFormat("%.*f", decimals, std::abs(v) < step * 1e-6 ? 0.0 : v)});
  }
  return ticks;
}

// Ticks at the powers of two inside [lo, hi] (log2 units), thinned to at most 12.
std::vector<Tick> log2_ticks(double lo, double hi) {
  const int first = static_cast<int>(std::ceil(lo - 1e-9)), last = static_cast<int>(hi + 1e-9);
  const int stride = std::max(1, (last - first + 12) / 12);
  std::vector<Tick> ticks;
  for (int k = first; k <= last; k += stride) ticks.push_back({double(k), power_of_two_label(k)});
  return ticks;
}

}  // namespace

Raster::Raster(int width, int height, Rgb background)
    : width_(width), height_(height), background_(background) {
  MSA_CHECK(width > 0 && height > 0, "Raster: %dx%d is empty", width, height);
  rgb_.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

Rgb Raster::pixel(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return background_;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  return {rgb_[i], rgb_[i + 1], rgb_[i + 2]};
}

void Raster::set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  rgb_[i] = c.r;
  rgb_[i + 1] = c.g;
  rgb_[i + 2] = c.b;
}

void Raster::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
  for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y)
    for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
}

void Raster::line(int x0, int y0, int x1, int y1, Rgb c, int thickness) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
  const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  const int lo = (thickness - 1) / 2, hi = thickness / 2;
  int err = dx + dy;
  while (true) {
    fill_rect(x0 - lo, y0 - lo, x0 + hi, y0 + hi, c);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

void Raster::text(int x, int y, const std::string& s, Rgb c, int scale) {
  for (size_t i = 0; i < s.size(); ++i) {
    const uint8_t* g = glyph(s[i]);
    const int left = x + static_cast<int>(i) * 6 * scale;
    for (int col = 0; col < 5; ++col)
      for (int row = 0; row < 7; ++row)
        if (g[col] >> row & 1)
          fill_rect(left + col * scale, y + row * scale, left + (col + 1) * scale - 1,
                    y + (row + 1) * scale - 1, c);
  }
}

absl::Status write_png(const Raster& raster, const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(raster.width());
  image.height = static_cast<png_uint_32>(raster.height());
  image.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&image, path.c_str(), 0, raster.rgb().data(), 0, nullptr))
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: cannot write the PNG (%s)", path, image.message));
  return absl::OkStatus();
}

Raster render_line_plot(const LinePlot& plot, int width, int height) {
  MSA_CHECK(width >= 200 && height >= 150, "render_line_plot: %dx%d is below 200x150", width,
            height);
  Raster r(width, height);
  const int s = width >= 600 && height >= 400 ? 2 : 1;  // font scale
  const int ch = Raster::text_height(s), gap = 4 * s;

  // Data ranges in axis units.
  auto ax = [&](double x) { return plot.log2_x ? std::log2(x) : x; };
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!plot.log2_x || x > 0);
  };
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const PlotSeries& series : plot.series)
    for (size_t i = 0; i < series.x.size() && i < series.y.size(); ++i) {
      if (!usable(series.x[i], series.y[i])) continue;
      x0 = std::min(x0, ax(series.x[i])), x1 = std::max(x1, ax(series.x[i]));
      y0 = std::min(y0, series.y[i]), y1 = std::max(y1, series.y[i]);
    }
  if (!(x0 <= x1)) x0 = 0, x1 = 1;
  if (!(y0 <= y1)) y0 = 0, y1 = 1;
  if (x1 - x0 < 1e-9) x0 -= 1, x1 += 1;
  if (y1 - y0 < 1e-9 * std::max(1.0, std::abs(y0))) y0 -= 0.5, y1 += 0.5;
  const std::vector<Tick> yticks = linear_ticks(y0, y1);
  std::vector<Tick> xticks;
  if (plot.log2_x) {
    const double pad = 0.05 * (x1 - x0);
    x0 -= pad, x1 += pad;
    xticks = log2_ticks(x0, x1);
  } else {
    xticks = linear_ticks(x0, x1);
  }

  // Layout: title and y label above the frame, tick labels left of and below it.
  int ylabel_w = 0;
  for (const Tick& t : yticks) ylabel_w = std::max(ylabel_w, Raster::text_width(t.label, s));
  const int left = 2 * gap + ylabel_w + gap, right = width - 4 * gap;
  const int top = 3 * gap + 2 * ch + 2 * gap, bottom = height - (4 * gap + 2 * ch);
  auto px = [&](double v) {
    return left + static_cast<int>(std::lround((v - x0) / (x1 - x0) * (right - left)));
  };
  auto py = [&](double v) {
    return bottom - static_cast<int>(std::lround((v - y0) / (y1 - y0) * (bottom - top)));
  };

  r.text((width - Raster::text_width(plot.title, s)) / 2, gap, plot.title, kBlack, s);
  r.text(gap, 2 * gap + ch, plot.y_label, kBlack, s);
  r.text((left + right - Raster::text_width(plot.x_label, s)) / 2, height - gap - ch, plot.x_label,
         kBlack, s);
  for (const Tick& t : yticks) {
    const int y = py(t.value);
    r.line(left + 1, y, right, y, kGrid);
    r.line(left - 2 * s, y, left, y, kBlack, s);
    r.text(left - gap - Raster::text_width(t.label, s), y - ch / 2, t.label, kBlack, s);
  }
  for (const Tick& t : xticks) {
    const int x = px(t.value);
    r.line(x, top, x, bottom - 1, kGrid);
    r.line(x, bottom, x, bottom + 2 * s, kBlack, s);
    r.text(x - Raster::text_width(t.label, s) / 2, bottom + gap + s, t.label, kBlack, s);
  }
  r.line(left, top, left, bottom, kBlack, s);
  r.line(left, bottom, right, bottom, kBlack, s);
  r.line(left, top, right, top, kBlack);
  r.line(right, top, right, bottom, kBlack);

  for (size_t k = 0; k < plot.series.size(); ++k) {
    const PlotSeries& series = plot.series[k];
    const Rgb c = kPalette[k % std::size(kPalette)];
    bool have_prev = false;
    int prev_x = 0, prev_y = 0;
    for (size_t i = 0; i < series.x.size() && i < series.y.size(); ++i) {
      if (!usable(series.x[i], series.y[i])) continue;
      const int x = px(ax(series.x[i])), y = py(series.y[i]);
      if (have_prev) r.line(prev_x, prev_y, x, y, c, s);
      r.fill_rect(x - 2 * s, y - 2 * s, x + 2 * s, y + 2 * s, c);
      have_prev = true, prev_x = x, prev_y = y;
    }
  }

  if (!plot.series.empty()) {
    const int sample_w = 8 * gap, row_h = ch + gap;
    // Labels (checkpoint paths by default) keep their ends, "..." in front, so that the box fits
    // inside the frame: a long one pushed it off the image, with the other labels.
    const int max_label_w = std::max(0, right - left - 5 * gap - sample_w);
    std::vector<std::string> labels;
    int label_w = 0;
    for (const PlotSeries& series : plot.series) {
      std::string label = series.label;
      for (size_t cut = 1; Raster::text_width(label, s) > max_label_w && cut < series.label.size();
           ++cut)
        label = "..." + series.label.substr(cut);
      label_w = std::max(label_w, Raster::text_width(label, s));
      labels.push_back(std::move(label));
    }
    const int box_w = gap + sample_w + gap + label_w + gap;
    const int box_h = gap + static_cast<int>(plot.series.size()) * row_h;
    // The frame corner whose box would hide the fewest data pixels (drawn above): the legend
    // sat top-right always, over the data of any curve that ends high.
    auto hidden = [&](int x0, int y0) {
      int n = 0;
      for (int y = y0; y <= y0 + box_h; ++y)
        for (int x = x0; x <= x0 + box_w; ++x)
          n += std::count(std::begin(kPalette), std::end(kPalette), r.pixel(x, y)) > 0;
      return n;
    };
    const std::pair<int, int> corners[] = {{right - gap - box_w, top + gap},
                                           {left + gap, top + gap},
                                           {right - gap - box_w, bottom - gap - box_h},
                                           {left + gap, bottom - gap - box_h}};
    // A box taller than the frame hangs from its top (from a bottom corner it rose off the
    // image, taking the first labels with it).
    const int candidates = box_h > bottom - top - 2 * gap ? 2 : 4;
    int bx = corners[0].first, by = corners[0].second, least = hidden(bx, by);
    for (int c = 1; c < candidates; ++c)
      if (const int n = hidden(corners[c].first, corners[c].second); n < least)
        bx = corners[c].first, by = corners[c].second, least = n;
    r.fill_rect(bx, by, bx + box_w, by + box_h, kWhite);
    r.line(bx, by, bx + box_w, by, kLegendBorder);
    r.line(bx, by + box_h, bx + box_w, by + box_h, kLegendBorder);
    r.line(bx, by, bx, by + box_h, kLegendBorder);
    r.line(bx + box_w, by, bx + box_w, by + box_h, kLegendBorder);
    for (size_t k = 0; k < plot.series.size(); ++k) {
      const int y = by + gap + static_cast<int>(k) * row_h;
      const Rgb c = kPalette[k % std::size(kPalette)];
      r.line(bx + gap, y + ch / 2, bx + gap + sample_w, y + ch / 2, c, s);
      r.text(bx + 2 * gap + sample_w, y, labels[k], kBlack, s);
    }
  }
  return r;
}

}  // namespace msa
