//! A Proxy-Wasm HTTP filter that does nothing but exist: every request passes through a
//! Wasm context with no hostcalls. It is the "(b) no-op filter" column of the ATRE
//! benchmark, so the cost of ATRE's own work can be told apart from the cost of Wasm.
#![cfg_attr(not(target_arch = "wasm32"), allow(unused))]

#[cfg(target_arch = "wasm32")]
mod noop {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
    }}

    struct NoopRoot;
    impl Context for NoopRoot {}
    impl RootContext for NoopRoot {
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(NoopHttp))
        }
    }

    struct NoopHttp;
    impl Context for NoopHttp {}
    impl HttpContext for NoopHttp {}
}
