// A small line-chart renderer for msa-eval's --plot: an RGB raster with lines, rectangles and a
// built-in 5x7 bitmap font, a chart layout (axes, ticks, labels, legend) and a PNG writer
// (libpng). Enough for a report figure; not a plotting library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace msa {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
};

inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kBlack{0, 0, 0};

// Pixels (x right, y down, (0, 0) top-left), row-major RGB. Drawing outside is clipped.
class Raster {
 public:
  Raster(int width, int height, Rgb background = kWhite);
  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& rgb() const { return rgb_; }  // width * height * 3 bytes
  Rgb pixel(int x, int y) const;                            // the background outside

  void set(int x, int y, Rgb c);
  // The rectangle with corners (x0, y0) and (x1, y1), both included.
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c);
  // A straight line from (x0, y0) to (x1, y1), both ends included (Bresenham), drawn with a
  // square brush `thickness` pixels wide.
  void line(int x0, int y0, int x1, int y1, Rgb c, int thickness = 1);
  // Text in the built-in 5x7 font with its top-left corner at (x, y), each font pixel `scale`
  // pixels wide. Lowercase letters are drawn as capitals; a character without a glyph as a box.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1);
  static int text_width(const std::string& s, int scale) {
    return s.empty() ? 0 : static_cast<int>(s.size()) * 6 * scale - scale;
  }
  static int text_height(int scale) { return 7 * scale; }

 private:
  int width_, height_;
  Rgb background_;
  std::vector<uint8_t> rgb_;
};

// Writes `raster` as an 8-bit RGB PNG. Errors name the path.
absl::Status write_png(const Raster& raster, const std::string& path);

struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  // same length; non-finite points (and x <= 0 on a log axis) skipped
};

struct LinePlot {
  std::string title, x_label, y_label;
  bool log2_x = false;  // x axis in log2, ticked at powers of two ("512", "1K", "64K", "1M")
  std::vector<PlotSeries> series;
};

// Draws `plot` on a white width x height raster: the frame with tick marks, grid lines and
// tick labels on both axes, the axis labels, the title, one coloured line with point markers per
// series and a legend in the top-right corner. Needs width >= 200 and height >= 150.
Raster render_line_plot(const LinePlot& plot, int width, int height);

}  // namespace msa
