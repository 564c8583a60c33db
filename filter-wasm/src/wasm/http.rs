//! The per-request context: pick primary or shadow, write the routing header only on a
//! redirect, and account the request (in-flight, latency, ORCA) for the controller.

use super::abi::{self, map, now_ns};
use super::{Side, Worker};
use crate::config::SessionKeySource;
use crate::decision::{RedirectDecision, cookie_value, decide, session_point};
use crate::orca::{ORCA_HEADER, OrcaReport};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

struct Routed {
    service: usize,
    side: Side,
    start_ns: u64,
}

pub(super) struct AtreHttp {
    worker: Rc<RefCell<Worker>>,
    routed: Option<Routed>,
}

impl AtreHttp {
    /// A request context of `worker`, not routed yet.
    pub(super) fn new(worker: Rc<RefCell<Worker>>) -> AtreHttp {
        AtreHttp {
            worker,
            routed: None,
        }
    }

    /// Stream end: record latency, release the in-flight slot. Idempotent.
    fn finish(&mut self) {
        let Some(r) = self.routed.take() else { return };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return;
        };
        let us = now_ns().saturating_sub(r.start_ns) / 1_000;
        let rt = &mut worker.services[r.service];
        rt.in_flight_delta[r.side.index()] -= 1;
        rt.window_mut(r.side).latency.record(us);
        rt.metrics.latency_ms.set(us / 1_000);
    }
}

impl Context for AtreHttp {}

impl HttpContext for AtreHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let worker = &mut *worker;
        let header = worker.config.route_header.as_str();
        let spoofed = matches!(abi::get_header(map::REQUEST_HEADERS, header), Ok(Some(_)));
        if spoofed {
            // Whatever happens next, the client's value never picks a cluster.
            worker.spoofed += 1;
            let _ = abi::remove_header(map::REQUEST_HEADERS, header);
        }
        let services = &worker.config.services;
        // A first service that answers any host (the sidecar case) needs no :authority read.
        let index = if services[0].hosts.iter().any(|h| h == "*") {
            Some(0)
        } else {
            let authority =
                abi::get_header_str(map::REQUEST_HEADERS, ":authority").unwrap_or_default();
            services
                .iter()
                .position(|s| s.matches_authority(&authority))
        };
        let Some(index) = index else {
            return Action::Continue;
        };
        let svc = &worker.config.services[index];
        let point = match &svc.session {
            Some(SessionKeySource::Header(h)) => abi::get_header(map::REQUEST_HEADERS, h)
                .ok()
                .flatten()
                .filter(|v| !v.is_empty())
                .map(|v| session_point(&v)),
            Some(SessionKeySource::Cookie(c)) => {
                abi::get_header_str(map::REQUEST_HEADERS, "cookie").and_then(|v| {
                    cookie_value(&v, c)
                        .filter(|s| !s.is_empty())
                        .map(|s| session_point(s.as_bytes()))
                })
            }
            None => None,
        };
        let rt = &mut worker.services[index];
        let decision = decide(&rt.plan, rt.shadow.ready, point, &mut rt.spreader);
        // Only a redirect writes the header. Writing any request header makes Envoy clear
        // the route cache and match again (≈ 20 µs a request in the benchmark), and a
        // request without the header already takes the route's default: the primary —
        // the same path a request takes when the filter fails open.
        let side = match decision {
            RedirectDecision::Shadow => {
                if abi::replace_header(map::REQUEST_HEADERS, header, &rt.shadow.cluster).is_ok() {
                    rt.window.redirected += 1;
                    Side::Shadow
                } else {
                    let _ = abi::remove_header(map::REQUEST_HEADERS, header);
                    Side::Primary
                }
            }
            RedirectDecision::Fallback => {
                rt.window.fallbacks += 1;
                Side::Primary
            }
            RedirectDecision::Primary => Side::Primary,
        };
        rt.started += 1;
        rt.in_flight_delta[side.index()] += 1;
        self.routed = Some(Routed {
            service: index,
            side,
            start_ns: now_ns(),
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(r) = &self.routed else {
            return Action::Continue;
        };
        let Some(value) = abi::get_header_str(map::RESPONSE_HEADERS, ORCA_HEADER) else {
            return Action::Continue;
        };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let w = worker.services[r.service].window_mut(r.side);
        match OrcaReport::parse(&value) {
            Ok(report) => {
                w.orca_sum += report.utilization();
                w.orca_reports += 1;
            }
            Err(_) => w.orca_malformed += 1,
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

impl Drop for AtreHttp {
    /// Belt and braces: if the host never called `on_log` for this stream, the in-flight
    /// slot is still released.
    fn drop(&mut self) {
        self.finish();
    }
}
