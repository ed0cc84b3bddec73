//! A picture of one run: an SVG timeline per scenario, next to the runner's JSON.
//!
//! One row per worker; a bar per critical section from acquire to release (or to the loss of
//! the lease, or to its validity end for a crashed holder), coloured by fencing token (a
//! gradient in grant order), with the validity end marked by a black tick where it mattered
//! (the section ran up to it or past it, or was lost), a noticed loss by a small red cross,
//! and each write the fenced resource refused as a red dot above its bar; injected faults (pause, kill, latency, blackhole, dropped replies,
//! resets, failover) as shaded spans over the rows they hit (every row for a node fault); every
//! checker violation as a red line at the instant it happened, labelled with its check.

use std::path::Path;

use lock_testkit::checker::Violation;
use lock_testkit::history::{Ending, History};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::common::DynError;

/// An injected fault, on the history's clock (CLOCK_MONOTONIC nanoseconds).
#[derive(Debug, Clone)]
pub(crate) struct FaultSpan {
    /// `pause`, `kill`, `latency`, `blackhole`, `drop`, `reset`, `restart`, `failover`, ...
    pub(crate) kind: &'static str,
    /// The worker it hit, or `None` for a node (every row).
    pub(crate) worker: Option<String>,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// What a timeline is drawn from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    pub(crate) history: History,
    pub(crate) faults: Vec<FaultSpan>,
    pub(crate) violations: Vec<Violation>,
}

const WIDTH: u32 = 1200;
const ROW: u32 = 34;
const LEFT: u32 = 90;
const TOP: u32 = 70;
const BOTTOM: u32 = 60;
const RIGHT: u32 = 30;

fn fault_colour(kind: &str) -> RGBColor {
    match kind {
        "pause" => RGBColor(120, 120, 220),
        "kill" | "restart" => RGBColor(60, 60, 60),
        "latency" | "slow" => RGBColor(230, 170, 60),
        "blackhole" => RGBColor(40, 40, 40),
        "drop" => RGBColor(200, 120, 200),
        "reset" | "conn-kill" => RGBColor(120, 200, 200),
        "failover" => RGBColor(220, 120, 60),
        _ => RGBColor(150, 150, 150),
    }
}

/// Token `i` of `n`: a gradient from blue (first) to green (last).
fn fence_colour(i: usize, n: usize) -> RGBColor {
    let t = if n <= 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(60.0, 70.0), mix(110.0, 170.0), mix(210.0, 90.0))
}

/// The instant a violation happened: the latest grant among its sections (for an overlap, the
/// second holder's acquire).
fn violation_instant(v: &Violation) -> Option<u64> {
    v.sections.iter().map(|s| s.t_acquired).max()
}

/// Writes the timeline of `scenario` to `path` as SVG.
pub(crate) fn write_svg(path: &Path, scenario: &str, driver: &str, tl: &Timeline) -> Result<(), DynError> {
    let sections = &tl.history.sections;
    let mut workers: Vec<String> = sections.iter().map(|s| s.worker.clone()).collect();
    for f in &tl.faults {
        if let Some(w) = &f.worker {
            workers.push(w.clone());
        }
    }
    workers.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    workers.dedup();
    let rows = workers.len().max(1);
    let height = TOP + BOTTOM + ROW * rows as u32;

    let starts = sections.iter().map(|s| s.t_acquired).chain(tl.faults.iter().map(|f| f.from));
    let ends = sections
        .iter()
        .map(|s| s.t_released.unwrap_or(s.valid_until).max(s.valid_until))
        .chain(tl.faults.iter().map(|f| f.to));
    let t0 = starts.min().unwrap_or(0);
    let t1 = ends.max().unwrap_or(t0 + 1).max(t0 + 1);
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
    let span = secs(t1);

    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let title = format!(
        "chaos {scenario} ({driver}): {}, {}, {}",
        count(sections.len(), "section"),
        count(tl.faults.len(), "fault"),
        count(tl.violations.len(), "violation")
    );
    root.draw(&Text::new(title, (LEFT as i32, 12), ("sans-serif", 18).into_font().color(&BLACK)))?;
    legend(&root, &tl.faults)?;

    let plot = root.margin(TOP, BOTTOM, LEFT, RIGHT);
    let (pw, ph) = plot.dim_in_pixel();
    let x = |t: u64| (secs(t) / span * f64::from(pw)).round() as i32;
    let row_of = |w: &str| workers.iter().position(|n| n == w).unwrap_or(0) as i32;
    let row_top = |r: i32| r * ROW as i32;

    // Row labels and guides.
    for (r, w) in workers.iter().enumerate() {
        let y = row_top(r as i32) + ROW as i32 / 2;
        root.draw(&Text::new(
            w.clone(),
            (LEFT as i32 - 10, TOP as i32 + y),
            TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        plot.draw(&PathElement::new(vec![(0, y), (pw as i32, y)], RGBColor(235, 235, 235)))?;
    }

    // Faults under the bars.
    for f in &tl.faults {
        let (a, b) = (x(f.from), x(f.to).max(x(f.from) + 2));
        let (top, bottom) = match &f.worker {
            Some(w) => (row_top(row_of(w)), row_top(row_of(w)) + ROW as i32),
            None => (0, ph as i32),
        };
        plot.draw(&Rectangle::new([(a, top), (b, bottom)], fault_colour(f.kind).mix(0.25).filled()))?;
        plot.draw(&Text::new(
            f.kind,
            (a + 2, top + 2),
            ("sans-serif", 10).into_font().color(&fault_colour(f.kind)),
        ))?;
    }

    // Sections.
    let mut fences: Vec<u64> = sections.iter().filter_map(|s| s.fence).collect();
    fences.sort_unstable();
    fences.dedup();
    for s in sections {
        let r = row_of(&s.worker);
        let end = match (s.t_released, s.t_lost) {
            (Some(t), _) => t,
            (None, Some(l)) => l,
            (None, None) => s.valid_until,
        };
        let colour = match s.fence {
            Some(f) => fence_colour(fences.binary_search(&f).unwrap_or(0), fences.len()),
            None => RGBColor(120, 120, 120),
        };
        let (a, b) = (x(s.t_acquired), x(end).max(x(s.t_acquired) + 3));
        let top = row_top(r) + 7;
        let bottom = row_top(r) + ROW as i32 - 7;
        let style = if s.ended == Ending::Crashed { colour.mix(0.45).filled() } else { colour.filled() };
        plot.draw(&Rectangle::new([(a, top), (b, bottom)], style))?;
        // The validity end, where it mattered: the section ran up to or past it (a paused,
        // partitioned or crashed holder), or its loss was noticed. A section released well
        // inside its validity would only add a tick far to its right.
        if s.t_lost.is_some() || s.t_released.is_none_or(|t| t >= s.valid_until) {
            let v = x(s.valid_until);
            plot.draw(&PathElement::new(vec![(v, top - 4), (v, bottom + 4)], BLACK.stroke_width(1)))?;
        }
        for w in s.writes.iter().filter(|w| !w.accepted) {
            plot.draw(&Circle::new((x(w.t), top - 3), 3, RED.filled()))?;
        }
        if let Some(l) = s.t_lost {
            let (lx, ly) = (x(l), (top + bottom) / 2);
            let red = RED.stroke_width(2);
            plot.draw(&PathElement::new(vec![(lx - 4, ly - 4), (lx + 4, ly + 4)], red))?;
            plot.draw(&PathElement::new(vec![(lx - 4, ly + 4), (lx + 4, ly - 4)], red))?;
        }
    }

    // Violations on top.
    for v in &tl.violations {
        let Some(t) = violation_instant(v) else { continue };
        let vx = x(t);
        plot.draw(&PathElement::new(vec![(vx, -6), (vx, ph as i32)], RED.stroke_width(2)))?;
        plot.draw(&Text::new(
            v.check.to_string(),
            (vx + 3, -16),
            ("sans-serif", 12).into_font().color(&RED),
        ))?;
    }

    // Time axis.
    let axis_y = ph as i32 + 8;
    plot.draw(&PathElement::new(vec![(0, axis_y), (pw as i32, axis_y)], BLACK))?;
    let step = nice_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let tx = (t / span * f64::from(pw)).round() as i32;
        plot.draw(&PathElement::new(vec![(tx, axis_y), (tx, axis_y + 5)], BLACK))?;
        plot.draw(&Text::new(
            format!("{t:.1} s"),
            (tx, axis_y + 8),
            TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        t += step;
    }
    root.present()?;
    Ok(())
}

fn nice_step(span: f64) -> f64 {
    let raw = span / 10.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(mag * 10.0).max(1e-3)
}

fn legend(root: &DrawingArea<SVGBackend<'_>, Shift>, faults: &[FaultSpan]) -> Result<(), DynError> {
    let mut x = LEFT as i32;
    let y = 40;
    let font = ("sans-serif", 12).into_font();
    let mut item = |label: String, draw: &dyn Fn(i32) -> Result<(), DynError>| -> Result<(), DynError> {
        draw(x)?;
        root.draw(&Text::new(label.clone(), (x + 22, y), font.clone()))?;
        x += 34 + 7 * label.len() as i32;
        Ok(())
    };
    item("section (colour: fencing token, blue = first)".into(), &|x| {
        root.draw(&Rectangle::new([(x, y), (x + 16, y + 10)], fence_colour(0, 2).filled()))?;
        Ok(())
    })?;
    item("validity end".into(), &|x| {
        root.draw(&PathElement::new(vec![(x + 8, y - 3), (x + 8, y + 13)], BLACK))?;
        Ok(())
    })?;
    item("loss noticed".into(), &|x| {
        root.draw(&PathElement::new(vec![(x + 4, y + 1), (x + 12, y + 9)], RED.stroke_width(2)))?;
        root.draw(&PathElement::new(vec![(x + 4, y + 9), (x + 12, y + 1)], RED.stroke_width(2)))?;
        Ok(())
    })?;
    item("write refused by the fenced resource".into(), &|x| {
        root.draw(&Circle::new((x + 8, y + 5), 4, RED.filled()))?;
        Ok(())
    })?;
    item("violation".into(), &|x| {
        root.draw(&PathElement::new(vec![(x + 8, y - 3), (x + 8, y + 13)], RED.stroke_width(2)))?;
        Ok(())
    })?;
    let mut kinds: Vec<&str> = faults.iter().map(|f| f.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        item(kind.to_string(), &|x| {
            root.draw(&Rectangle::new([(x, y), (x + 16, y + 10)], fault_colour(kind).mix(0.35).filled()))?;
            Ok(())
        })?;
    }
    Ok(())
}
