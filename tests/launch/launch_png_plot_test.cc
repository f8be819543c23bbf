// The rasterizer behind msa-eval --plot: lines cover the pixels they should and no others, text
// draws glyphs, a chart puts each series in its colour, and the PNG writer round-trips.
#include <png.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/png_plot.h"

namespace msa {
namespace {

constexpr Rgb kRed{255, 0, 0};

int count(const Raster& r, Rgb c) {
  int n = 0;
  for (int y = 0; y < r.height(); ++y)
    for (int x = 0; x < r.width(); ++x) n += r.pixel(x, y) == c;
  return n;
}

TEST(PngPlotTest, HorizontalLineCoversItsPixelsOnly) {
  Raster r(20, 10);
  r.line(2, 3, 12, 3, kRed);
  for (int x = 2; x <= 12; ++x) EXPECT_EQ(r.pixel(x, 3), kRed) << x;
  EXPECT_EQ(r.pixel(1, 3), kWhite);
  EXPECT_EQ(r.pixel(13, 3), kWhite);
  EXPECT_EQ(count(r, kRed), 11);
}

TEST(PngPlotTest, DiagonalLineCrossesTheDiagonalInBothDirections) {
  Raster r(10, 10);
  r.line(9, 9, 0, 0, kRed);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(r.pixel(i, i), kRed) << i;
  EXPECT_EQ(count(r, kRed), 10);
  // A shallow line: one pixel per column, rising one row over its length.
  Raster s(11, 5);
  s.line(0, 1, 10, 2, kRed);
  for (int x = 0; x <= 10; ++x) EXPECT_TRUE(s.pixel(x, 1) == kRed || s.pixel(x, 2) == kRed) << x;
  EXPECT_EQ(s.pixel(0, 1), kRed);
  EXPECT_EQ(s.pixel(10, 2), kRed);
  EXPECT_EQ(count(s, kRed), 11);
}

TEST(PngPlotTest, ThickLinesAndClipping) {
  Raster r(10, 10);
  r.line(-5, 4, 20, 4, kRed, 3);  // clipped at both ends; rows 3..5
  EXPECT_EQ(count(r, kRed), 30);
  EXPECT_EQ(r.pixel(0, 3), kRed);
  EXPECT_EQ(r.pixel(9, 5), kRed);
  EXPECT_EQ(r.pixel(5, 2), kWhite);
}

TEST(PngPlotTest, TextDrawsGlyphsAndLowercaseAsCapitals) {
  Raster r(40, 10);
  r.text(1, 1, "1", kBlack);
  // The "1" glyph: a vertical stroke in its middle column, 7 rows high, with a base.
  for (int y = 1; y <= 7; ++y) EXPECT_EQ(r.pixel(3, y), kBlack) << y;
  Raster upper(40, 10), lower(40, 10);
  upper.text(0, 0, "LOSS", kBlack);
  lower.text(0, 0, "loss", kBlack);
  EXPECT_EQ(upper.rgb(), lower.rgb());
  EXPECT_EQ(Raster::text_width("LOSS", 2), 4 * 12 - 2);
  Raster blank(10, 10);
  blank.text(0, 0, " ", kBlack);
  EXPECT_EQ(count(blank, kBlack), 0);
}

TEST(PngPlotTest, ChartDrawsEverySeriesInItsColourAndAFrame) {
  LinePlot plot;
  plot.title = "loss by position";
  plot.x_label = "position";
  plot.y_label = "loss";
  plot.log2_x = true;
  plot.series = {{"a", {512, 1536, 3072}, {3.0, 2.5, 2.4}},
                 {"b", {512, 1536, 3072}, {3.1, 2.9, NAN}}};
  const Raster r = render_line_plot(plot, 400, 300);
  EXPECT_EQ(r.width(), 400);
  EXPECT_EQ(r.height(), 300);
  EXPECT_GT(count(r, Rgb{31, 119, 180}), 100);  // series a
  EXPECT_GT(count(r, Rgb{255, 127, 14}), 50);   // series b (its NaN point skipped)
  EXPECT_GT(count(r, kBlack), 500);             // frame, ticks and labels
}

// A long label (checkpoint paths are the default labels) keeps the legend inside the image: its
// box's left edge was pushed past x = 0, cutting its text and hiding the short label's entry.
TEST(PngPlotTest, LongLabelsKeepTheLegendInsideTheFrame) {
  LinePlot plot;
  plot.series = {{std::string(300, 'x') + "/ckpt-00000060.h5", {1, 2}, {1.0, 2.0}},
                 {"b", {1, 2}, {2.0, 1.0}}};
  const Raster r = render_line_plot(plot, 400, 300);
  constexpr Rgb kLegendBorder{160, 160, 160};
  int leftmost = r.width();
  for (int y = 0; y < r.height(); ++y)
    for (int x = 0; x < r.width(); ++x)
      if (r.pixel(x, y) == kLegendBorder) leftmost = std::min(leftmost, x);
  ASSERT_LT(leftmost, r.width()) << "no legend drawn";
  EXPECT_GT(leftmost, 20) << "the legend box starts at the image's edge";
}

// The legend goes to the frame corner where it hides the least data: it always sat top-right,
// over the last points of any curve that ends high.
TEST(PngPlotTest, LegendAvoidsTheData) {
  LinePlot plot;
  plot.series = {{"rising", {1, 2, 3, 4}, {1.0, 2.0, 3.0, 4.0}}};
  const Raster r = render_line_plot(plot, 400, 300);
  constexpr Rgb kSeries{31, 119, 180}, kLegendBorder{160, 160, 160};
  int legend_x = r.width(), legend_y = r.height(), top_right_series = 0;
  for (int y = 0; y < r.height(); ++y)
    for (int x = 0; x < r.width(); ++x) {
      if (r.pixel(x, y) == kLegendBorder)
        legend_x = std::min(legend_x, x), legend_y = std::min(legend_y, y);
      top_right_series += r.pixel(x, y) == kSeries && x > r.width() * 3 / 4 && y < r.height() / 3;
    }
  ASSERT_LT(legend_x, r.width()) << "no legend drawn";
  EXPECT_GT(top_right_series, 10) << "the last point, not hidden";
  // Neither in the top-right corner (the data) nor the bottom-left one (the first point).
  EXPECT_FALSE(legend_x > r.width() / 2 && legend_y < r.height() / 2);
  EXPECT_FALSE(legend_x < r.width() / 2 && legend_y > r.height() / 2);
}

// A legend taller than the frame (many series on a small plot) hangs from the frame's top: from
// a bottom corner it rose off the image with its first labels.
TEST(PngPlotTest, TallLegendStartsInsideTheImage) {
  LinePlot plot;
  for (int k = 0; k < 25; ++k)
    plot.series.push_back({"s" + std::to_string(k), {1, 2}, {1.0 * k, 1.0 * k + 0.5}});
  const Raster r = render_line_plot(plot, 400, 300);
  constexpr Rgb kLegendBorder{160, 160, 160};
  int top = r.height();
  for (int y = 0; y < r.height(); ++y)
    for (int x = 0; x < r.width(); ++x)
      if (r.pixel(x, y) == kLegendBorder) top = std::min(top, y);
  ASSERT_LT(top, r.height()) << "no legend drawn";
  EXPECT_GT(top, 20) << "the legend's top border is above the frame";
}

TEST(PngPlotTest, PngRoundTrips) {
  Raster r(30, 20);
  r.line(0, 0, 29, 19, kRed);
  const std::string path =
      std::string(::testing::TempDir()) + "/plot_" + std::to_string(getpid()) + ".png";
  ASSERT_TRUE(write_png(r, path).ok());
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_file(&image, path.c_str())) << image.message;
  image.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> rgb(PNG_IMAGE_SIZE(image));
  ASSERT_TRUE(png_image_finish_read(&image, nullptr, rgb.data(), 0, nullptr)) << image.message;
  EXPECT_EQ(rgb, r.rgb());
  const absl::Status bad = write_png(r, "/nonexistent-dir/x.png");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.message()).find("/nonexistent-dir/x.png"), std::string::npos);
}

}  // namespace
}  // namespace msa
