use shadowmesh_e2e::{Stack, StackConfig};
use shadowmesh_examples::loadgen;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let stack = Stack::start(StackConfig::atre(16)).await.unwrap();
    let c = loadgen::client();
    for _ in 0..5 {
        let r = loadgen::get(&c, stack.envoy.listener, "checkout.local", "/", &[]).await;
        println!("{r:?}");
    }
    stack.wait_for_first_report().await.unwrap();
    println!("{}", serde_json::to_string_pretty(&stack.hub.reports()).unwrap());
    println!("{}", stack.envoy.prometheus().unwrap().lines().filter(|l| l.contains("shadowmesh") && !l.contains("envoy_cluster")).collect::<Vec<_>>().join("\n"));
    println!("{}", stack.envoy.log_tail(15));
}
