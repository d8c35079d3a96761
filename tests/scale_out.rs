//! Scale-out as the README shows it: two Lessls (one per engine in production; here both on
//! the shared engine, told apart by `--instance`) behind nginx with contrib/lessl-lb.nginx.conf,
//! whose ports and instance names are the only things this test changes.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

/// An nginx master this test started (`daemon off`), stopped and its directory removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Nginx {
    fn start(lessls: &[(&str, &str)]) -> Nginx {
        let nginx = Command::new("sh")
            .args(["-c", "command -v nginx || ls /usr/sbin/nginx"])
            .output()
            .unwrap();
        let bin = String::from_utf8_lossy(&nginx.stdout).trim().to_string();
        assert!(
            !bin.is_empty(),
            "nginx is not installed (Debian: apt-get install nginx-light; \
             contrib/test-env.sh --setup installs it)"
        );
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("nginx"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut site = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/lessl-lb.nginx.conf"
        ))
        .unwrap()
        .replace("127.0.0.1:8080", &addr);
        for (shown, (instance, lessl_addr)) in [("lessl-a", "8734"), ("lessl-b", "8735")]
            .iter()
            .zip(lessls)
        {
            site = site
                .replace(&format!("127.0.0.1:{}", shown.1), lessl_addr)
                .replace(&format!("/{}/", shown.0), &format!("/{instance}/"));
        }
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, dir, addr };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&nginx.addr).is_ok()
        });
        if !up {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            let _ = nginx.child.kill();
            panic!("nginx did not listen; its log:\n{log}");
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: the master finishes what is in flight and takes its worker with it.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        if !wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tasks_spread_over_instances_and_are_found_again_through_the_balancer() {
    let a = Lessl::start(&[]);
    let b = Lessl::start(&[]);
    let lb = Nginx::start(&[(&a.instance, &a.addr), (&b.instance, &b.addr)]);
    let json_type = [("Content-Type", "application/json")];

    let mut made = Vec::new();
    for n in 0..4 {
        let body = json!({"image": BUSYBOX, "daemon": true, "cmd": [format!("echo {n}")]});
        let r = http(
            &lb.addr,
            "POST",
            "/tasks",
            Some(body.to_string().as_bytes()),
            &json_type,
        )
        .expect(201);
        let instance = r
            .header("Lessl-Instance")
            .expect("Lessl-Instance")
            .to_string();
        let v = r.json();
        assert_eq!(v["results"][0]["stdout"], format!("{n}\n"), "{v}");
        made.push((instance, v["id"].as_str().unwrap().to_string()));
    }
    // Round robin over two upstreams: both took tasks.
    for lessl in [&a, &b] {
        assert!(
            made.iter().any(|(i, _)| *i == lessl.instance),
            "{} got no task: {made:?}",
            lessl.instance
        );
    }
    // Each task answers under its own instance's prefix, and only there.
    for (instance, id) in &made {
        let other = if *instance == a.instance { &b } else { &a };
        let r = http(
            &lb.addr,
            "PUT",
            &format!("/{instance}/tasks/{id}"),
            Some(json!({"cmd": ["echo again"]}).to_string().as_bytes()),
            &json_type,
        )
        .expect(200);
        assert_eq!(r.json()["results"][0]["stdout"], "again\n");
        http(
            &lb.addr,
            "GET",
            &format!("/{}/tasks/{id}", other.instance),
            None,
            &[],
        )
        .expect(404);
        http(
            &lb.addr,
            "DELETE",
            &format!("/{instance}/tasks/{id}"),
            None,
            &[],
        )
        .expect(204);
    }
    drop(lb);
    for lessl in [a, b] {
        assert!(wait_until(Duration::from_secs(10), || lessl
            .containers()
            .is_empty()));
        lessl.finish();
    }
}
