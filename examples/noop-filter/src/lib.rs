//! A Proxy-Wasm HTTP filter that does nothing but exist: every request passes through a
//! Wasm context with no hostcalls. It is the "(b) no-op filter" column of the ATRE
//! benchmark, so the cost of ATRE's own work can be told apart from the cost of Wasm.
//!
//! With the plugin configuration `fault` it instead panics on every request — a VM fault
//! on demand, for the test that Envoy's `failure_policy: FAIL_OPEN` plus Shadowmesh's route
//! design send requests to the primary when a filter breaks.
#![cfg_attr(not(target_arch = "wasm32"), allow(unused))]

#[cfg(target_arch = "wasm32")]
mod noop {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot { fault: false }) });
    }}

    struct NoopRoot {
        fault: bool,
    }

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, size: usize) -> bool {
            let config =
                proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size);
            self.fault = matches!(config, Ok(Some(ref c)) if c.as_slice() == b"fault");
            true
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(NoopHttp { fault: self.fault }))
        }
    }

    struct NoopHttp {
        fault: bool,
    }

    impl Context for NoopHttp {}

    impl HttpContext for NoopHttp {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.fault {
                panic!("deliberate fault (plugin configuration `fault`)");
            }
            Action::Continue
        }
    }
}
