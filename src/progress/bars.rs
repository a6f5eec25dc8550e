//! Terminal bars: one per layer during a push, one per machine during a rollout.

use super::{Event, LayerOutcome, human_bytes, short_digest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;

pub(super) struct Bars {
    multi: MultiProgress,
    layers: HashMap<usize, ProgressBar>,
    machines: HashMap<String, ProgressBar>,
}

impl Bars {
    pub(super) fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            layers: HashMap::new(),
            machines: HashMap::new(),
        }
    }

    pub(super) fn handle(&mut self, event: &Event) {
        match event {
            Event::LayerStarted { index, diff_id, size } => {
                let bar = self.multi.add(match size {
                    Some(total) => ProgressBar::new(*total),
                    None => ProgressBar::no_length(),
                });
                let template = if size.is_some() {
                    "{prefix} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
                } else {
                    "{prefix} {spinner} {bytes} {binary_bytes_per_sec} {msg}"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(format!("layer {index:>3} {}", short_digest(diff_id)));
                self.layers.insert(*index, bar);
            }
            Event::LayerProgress { index, bytes } => {
                if let Some(bar) = self.layers.get(index) {
                    bar.inc(*bytes);
                }
            }
            Event::LayerDone {
                index, outcome, size, ..
            } => {
                if let Some(bar) = self.layers.get(index) {
                    let what = match outcome {
                        LayerOutcome::Skipped => "already in registry".to_string(),
                        LayerOutcome::Mounted => "mounted".to_string(),
                        LayerOutcome::Uploaded => format!("uploaded {}", human_bytes(*size)),
                    };
                    bar.finish_with_message(what);
                }
            }
            Event::Machine {
                machine,
                group,
                status,
            }
            | Event::MachineDone {
                machine,
                group,
                status,
                ..
            } => {
                let bar = self.machines.entry(machine.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    if let Ok(style) = ProgressStyle::with_template("{prefix} {spinner} {msg}") {
                        bar.set_style(style);
                    }
                    bar.set_prefix(format!("machine {machine} [{group}]"));
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar
                });
                if matches!(event, Event::MachineDone { .. }) {
                    bar.finish_with_message(status.clone());
                } else {
                    bar.set_message(status.clone());
                }
            }
            Event::Info { message } => {
                let _ = self.multi.println(message);
            }
            Event::Warning { message } => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            Event::Debug { message } => {
                let _ = self.multi.println(format!("debug: {message}"));
            }
            Event::Pushed { reference, .. } => {
                let _ = self.multi.println(format!("pushed {reference}"));
            }
            // main prints the error line once the bars are cleared.
            Event::Error { .. } => {}
        }
    }

    /// Run `print` (writing to stdout) with the bars lifted, so its lines end up above them.
    pub(super) fn above(&self, print: impl FnOnce()) {
        self.multi.suspend(print);
    }

    pub(super) fn finish(&mut self) {
        for bar in self.layers.values().chain(self.machines.values()) {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        let _ = self.multi.clear();
    }
}
