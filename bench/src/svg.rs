//! Line charts as hand-written SVG: axes with round ticks, one polyline per series, a legend.

use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (latency CDFs span decades).
    pub log_x: bool,
    pub series: Vec<Series>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const L: f64 = 80.0;
const R: f64 = 180.0;
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let pts =
            self.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
        let pts: Vec<(f64, f64)> = pts.filter(|p| !self.log_x || p.0 > 0.0).copied().collect();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            s,
            r#"<rect width="{W}" height="{H}" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            (L + W - R) / 2.0,
            esc(&self.title)
        );
        if pts.is_empty() {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
                W / 2.0,
                H / 2.0
            );
            return s;
        }
        let tx = |x: f64| if self.log_x { x.log10() } else { x };
        let (mut x0, mut x1) =
            pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(tx(p.0)), a.1.max(tx(p.0))));
        let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        y0 = y0.min(0.0);
        if self.log_x {
            x0 = x0.floor();
            x1 = x1.ceil();
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            y1 = y0 + 1.0;
        }
        let ystep = nice_step(y1 - y0);
        y1 = (y1 / ystep).ceil() * ystep;
        let px = |x: f64| L + (tx(x) - x0) / (x1 - x0) * (W - L - R);
        let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
        // axes and grid
        let _ = write!(
            s,
            r##"<g stroke="#999" stroke-width="1"><line x1="{L}" y1="{}" x2="{}" y2="{}"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}"/></g>"##,
            H - B,
            W - R,
            H - B,
            H - B
        );
        let mut y = y0;
        while y <= y1 + ystep * 0.01 {
            let (xr, yy, xt, yt, label) = (W - R, py(y), L - 6.0, py(y) + 4.0, fmt_num(y));
            let _ = write!(
                s,
                r##"<line x1="{L}" x2="{xr}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{xt}" y="{yt}" text-anchor="end">{label}</text>"##
            );
            y += ystep;
        }
        if self.log_x {
            let mut d = x0;
            while d <= x1 + 1e-9 {
                let v = 10f64.powf(d);
                let (yb, xx, yt, label) = (H - B, px(v), H - B + 16.0, fmt_num(v));
                let _ = write!(
                    s,
                    r##"<line y1="{T}" y2="{yb}" x1="{xx}" x2="{xx}" stroke="#eee"/><text x="{xx}" y="{yt}" text-anchor="middle">{label}</text>"##
                );
                d += 1.0;
            }
        } else {
            let step = nice_step(x1 - x0);
            let mut x = (x0 / step).ceil() * step;
            while x <= x1 + step * 0.01 {
                let (yb, xx, yt, label) = (H - B, px(x), H - B + 16.0, fmt_num(x));
                let _ = write!(
                    s,
                    r##"<line y1="{T}" y2="{yb}" x1="{xx}" x2="{xx}" stroke="#eee"/><text x="{xx}" y="{yt}" text-anchor="middle">{label}</text>"##
                );
                x += step;
            }
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 18.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        for (i, ser) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let line: Vec<String> = ser
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!self.log_x || p.0 > 0.0))
                .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                line.join(" ")
            );
            let ly = T + 10.0 + 20.0 * i as f64;
            let _ = write!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                W - R + 12.0,
                W - R + 36.0,
                W - R + 42.0,
                ly + 4.0,
                esc(&ser.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_and_empty_charts() {
        let c = Chart {
            title: "a < b".into(),
            x_label: "ms".into(),
            y_label: "fraction".into(),
            log_x: true,
            series: vec![Series { name: "fanout".into(), points: vec![(0.5, 0.1), (3.0, 0.9), (40.0, 1.0)] }],
        };
        let svg = c.render();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("a &lt; b"));
        let empty = Chart { series: vec![], ..c }.render();
        assert!(empty.contains("no data"));
    }
}
