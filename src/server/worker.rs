//! The engine's own thread. HTTP handlers send it commands; it steps the engine while
//! anything is unfinished and routes each request's output to that request's channel.
//! A channel whose receiver is gone means the client left: the request is aborted and
//! its KV blocks are freed at once.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};

use tokio::sync::{mpsc as channel, oneshot};

use super::metrics::{Metrics, Outcome};
use crate::engine::{Engine, Prompt, RequestId, SamplingParams, StepOutput};
use crate::error::Error;

pub enum Command {
    /// Queues a batch of requests (one per prompt), all or none: the reply carries their
    /// ids in order, or the first request's error.
    Submit {
        requests: Vec<(Prompt, SamplingParams)>,
        events: channel::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<Vec<RequestId>, Error>>,
    },
    Abort(Vec<RequestId>),
    /// Aborts everything in flight (the shutdown grace period is over).
    AbortAll,
    Shutdown,
}

pub enum Event {
    /// A step's output for the request at `position` of its batch.
    Output { position: usize, output: StepOutput },
    /// The engine failed; the request is gone.
    Failed(String),
}

struct Route {
    events: channel::UnboundedSender<Event>,
    position: usize,
    n: usize,
}

pub struct Worker {
    engine: Engine,
    routes: HashMap<RequestId, Route>,
    metrics: Arc<Metrics>,
    /// Set by `AbortAll`: the server is going away and takes no new work.
    draining: bool,
}

impl Worker {
    pub fn new(engine: Engine, metrics: Arc<Metrics>) -> Self {
        Self { engine, routes: HashMap::new(), metrics, draining: false }
    }

    /// Runs until told to shut down or until every sender is gone.
    pub fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            // Block while idle; while busy, take what has arrived and step.
            let first = if self.engine.has_unfinished() {
                match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                }
            };
            let mut next = first;
            while let Some(command) = next {
                if !self.handle(command) {
                    self.abort_all();
                    return;
                }
                next = commands.try_recv().ok();
            }
            if self.engine.has_unfinished() {
                self.step();
            }
            self.metrics.observe_engine(self.engine.stats());
        }
        self.abort_all();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            // Dropping the reply tells the handler the engine is gone (503).
            Command::Submit { .. } if self.draining => {}
            Command::Submit { requests, events, reply } => {
                let result = self.submit(requests, &events);
                // The handler stopped waiting (its client left): nothing will read these.
                if let Err(Ok(ids)) = reply.send(result) {
                    for id in ids {
                        self.abort(id, Outcome::Aborted);
                    }
                }
            }
            Command::Abort(ids) => {
                for id in ids {
                    self.abort(id, Outcome::Aborted);
                }
            }
            Command::AbortAll => {
                self.draining = true;
                self.abort_all();
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn submit(&mut self, requests: Vec<(Prompt, SamplingParams)>, events: &channel::UnboundedSender<Event>) -> Result<Vec<RequestId>, Error> {
        let mut ids = Vec::with_capacity(requests.len());
        for (position, (prompt, params)) in requests.into_iter().enumerate() {
            let n = params.n;
            match self.engine.add_request(prompt, params) {
                Ok(id) => {
                    self.routes.insert(id, Route { events: events.clone(), position, n });
                    ids.push(id);
                }
                Err(error) => {
                    // All or none: the ones queued so far have not run yet.
                    for id in ids {
                        self.routes.remove(&id);
                        self.engine.abort(id);
                    }
                    return Err(error);
                }
            }
        }
        Ok(ids)
    }

    fn step(&mut self) {
        match self.engine.step() {
            Ok(outputs) => {
                for output in outputs {
                    self.deliver(output);
                }
            }
            Err(error) => {
                // A failed step cannot be pinned on one request: fail them all, keep serving.
                tracing::error!("engine step failed: {error}");
                let message = error.to_string();
                for (id, route) in std::mem::take(&mut self.routes) {
                    let _ = route.events.send(Event::Failed(message.clone()));
                    self.engine.abort(id);
                    self.metrics.observe_unfinished(Outcome::Failed);
                }
            }
        }
    }

    fn deliver(&mut self, output: StepOutput) {
        let id = output.request;
        let Some(route) = self.routes.get(&id) else { return };
        for reason in output.deltas.iter().filter_map(|d| d.finish_reason) {
            self.metrics.observe_completion(reason);
        }
        let position = route.position;
        if let Some(metrics) = &output.finished {
            // Counted before the client can see the end, so metrics never lag a response.
            self.metrics.observe_finished(metrics, route.n);
            if let Some(route) = self.routes.remove(&id) {
                let _ = route.events.send(Event::Output { position, output });
            }
        } else if route.events.send(Event::Output { position, output }).is_err() {
            self.abort(id, Outcome::Aborted);
        }
    }

    fn abort(&mut self, id: RequestId, outcome: Outcome) {
        if self.routes.remove(&id).is_some() {
            self.engine.abort(id);
            self.metrics.observe_unfinished(outcome);
        }
    }

    fn abort_all(&mut self) {
        let ids: Vec<RequestId> = self.routes.keys().copied().collect();
        for id in ids {
            self.abort(id, Outcome::Aborted);
        }
    }
}
