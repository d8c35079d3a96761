//! Pulling missing images only when the operator allows it, against a minimal registry on
//! 127.0.0.1 started by the test (no real registry is reachable).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

struct Registry {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Registry {
    fn start() -> Registry {
        let dir = std::env::temp_dir().join(unique("registry"));
        let root = dir.join("root/bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy("/bin/busybox", root.join("busybox")).unwrap();
        for applet in ["sh", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join(applet)).unwrap();
        }
        let layer = dir.join("layer.tar");
        let status = Command::new("tar")
            .args([
                "-C",
                dir.join("root").to_str().unwrap(),
                "-cf",
                layer.to_str().unwrap(),
                ".",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let port_file = dir.join("port");
        let child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/registry.py"))
            .arg(&port_file)
            .arg(&layer)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        assert!(
            wait_until(Duration::from_secs(10), || port_file.exists()),
            "registry did not start"
        );
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Registry { child, port, dir }
    }

    fn image(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}:v1", self.port)
    }

    fn manifest_requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("port.pulls"))
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn missing_images_are_pulled_only_when_allowed() {
    let registry = Registry::start();
    let refused = registry.image(&unique("refused"));
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": refused, "cmd": ["echo hi"]}).to_string())
        .expect(422)
        .json();
    assert_eq!(v["error"]["field"], "image");
    assert_eq!(
        registry.manifest_requests(),
        0,
        "Lessl pulled without --allow-pull"
    );
    lessl.finish();

    let pulled = registry.image(&unique("pulled"));
    let lessl = Lessl::start(&["--allow-pull", "127.0.0.1:*"]);
    let v = lessl
        .post(&json!({"image": pulled, "cmd": ["echo from a pulled image"]}).to_string())
        .expect(201)
        .json();
    // The task's container goes after its run; then the pulled image can go too.
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    docker(&["rmi", &pulled]);
    assert_eq!(v["results"][0]["stdout"], "from a pulled image\n", "{v}");
    assert!(registry.manifest_requests() >= 1);
    // A pattern that does not match is not pulled, and a pull that fails is a 422.
    let other = format!("127.0.0.1:1/{}:v1", unique("unreachable"));
    let v = lessl
        .post(&json!({"image": other}).to_string())
        .expect(422)
        .json();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{v}"
    );
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
}
