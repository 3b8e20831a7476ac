//! Seed inputs: valid and nearly valid examples of each input, which the
//! mutator bends.

use serde_json::json;

pub fn configs() -> Vec<Vec<u8>> {
    let mut every_key = String::new();
    for k in dockhand_agent::config::KEYS {
        every_key.push_str(&format!("{}={}\n", k.name, k.default));
    }
    vec![
        b"ECS_CLUSTER=my-ecs-cluster\n".to_vec(),
        every_key.into_bytes(),
        b"# comment\n\n  ECS_CLUSTER = \"prod\" \nECS_LOGLEVEL='debug'\nexport ECS_RESERVED_MEMORY=256\n"
            .to_vec(),
        b"ECS_CONTAINER_STOP_TIMEOUT=1m30s\nDOCKHAND_PROXY_LISTEN=0.0.0.0:80,127.0.0.1:8080\nECS_RESERVED_PORTS=[22,2375]\nECS_DYNAMIC_HOST_PORT_RANGE=49153-65535\nECS_INSTANCE_ATTRIBUTES={\"stack\":\"prod\"}\n".to_vec(),
        b"DOCKHAND_PROXY_IDLE_TIMEOUT=18446744073709551615s\nECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=5124095576030431h\n".to_vec(),
    ]
}

pub fn service_files() -> Vec<Vec<u8>> {
    let article = json!({
        "serviceName": "hello-world-service",
        "desiredCount": 4,
        "schedulingStrategy": "REPLICA",
        "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200,
            "deploymentCircuitBreaker": {"enable": true, "rollback": true}},
        "healthCheckGracePeriodSeconds": 0,
        "taskDefinition": {
            "family": "hello-world-task",
            "networkMode": "bridge",
            "containerDefinitions": [{
                "name": "hello-world-container",
                "image": "training/webapp:latest",
                "command": ["python", "app.py"],
                "memory": 128,
                "essential": true,
                "portMappings": [{"containerPort": 5000, "hostPort": 0, "protocol": "tcp"}],
                "environment": [{"name": "PROVIDER", "value": "ECS"}]
            }]
        },
        "loadBalancers": [{
            "containerName": "hello-world-container",
            "containerPort": 5000,
            "hosts": ["example.com", "*.example.org"],
            "pathPrefix": "/",
            "healthCheck": {"path": "/", "intervalSeconds": 5, "timeoutSeconds": 2,
                            "healthyThresholdCount": 2, "unhealthyThresholdCount": 3,
                            "matcher": "200-399"},
            "deregistrationDelaySeconds": 30,
            "loadBalancingAlgorithm": "round_robin"
        }]
    });
    let rich = json!({
        "serviceName": "rich", "desiredCount": 2,
        "taskDefinition": {
            "family": "rich", "networkMode": "bridge", "cpu": "1 vCPU", "memory": "0.5 GB",
            "volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}}],
            "executionRoleArn": "arn:aws:iam::1:role/x",
            "containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false, "memoryReservation": 16,
                 "command": ["true"]},
                {"name": "app", "image": "127.0.0.1:5000/app@sha256:abc", "memory": 64, "cpu": 256,
                 "entryPoint": ["/app"], "user": "1000", "workingDirectory": "/srv",
                 "stopTimeout": 10, "dockerLabels": {"team": "a"},
                 "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
                 "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": true}],
                 "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}},
                 "healthCheck": {"command": ["CMD-SHELL", "true"], "interval": 5, "timeout": 2,
                                 "retries": 3, "startPeriod": 0},
                 "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}],
                 "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60},
                 "portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "protocol": "udp"}]}
            ]
        }
    });
    let host = json!({
        "serviceName": "daemon", "schedulingStrategy": "DAEMON",
        "taskDefinition": {"family": "d", "networkMode": "host", "memory": "64",
            "containerDefinitions": [{"name": "d", "image": "x",
                "portMappings": [{"containerPort": 9100}]}]}
    });
    vec![
        serde_json::to_vec_pretty(&article).unwrap_or_default(),
        serde_json::to_vec(&rich).unwrap_or_default(),
        serde_json::to_vec(&host).unwrap_or_default(),
        br#"{"serviceName": "x", "serviceName": "y"}"#.to_vec(),
    ]
}

pub fn http_requests() -> Vec<Vec<u8>> {
    let mut chunked =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    vec![
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        b"GET /headers?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close, X-A\r\nX-A: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n".to_vec(),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        chunked,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nping".to_vec(),
        b"GET http://x/abs HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n".to_vec(),
    ]
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS of a GET of `/` on stream 1, ending it: `:method GET`, `:scheme
/// http`, `:path /` (HPACK static entries), then `:authority: x` (literal
/// without indexing, name index 1).
fn h2_get() -> Vec<u8> {
    h2_frame(1, 5, 1, &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'])
}

/// A whole prior-knowledge HTTP/2 GET of `/`: the preface, empty SETTINGS,
/// and [`h2_get`]. The h2c target's good request.
pub fn h2c_get() -> Vec<u8> {
    [H2_PREFACE, &h2_frame(4, 0, 0, &[]), &h2_get()].concat()
}

/// Prior-knowledge HTTP/2 connections: the preface and frames (SETTINGS,
/// HEADERS, DATA, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY), and one
/// HTTP/1.1 request, since the same listener takes both.
pub fn h2c_requests() -> Vec<Vec<u8>> {
    let settings = h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    // :method POST (index 3) with a body in DATA.
    let post = [
        h2_frame(1, 4, 3, &[0x83, 0x86, 0x84]),
        h2_frame(0, 1, 3, b"hello"),
    ]
    .concat();
    let tail = [
        h2_frame(6, 0, 0, &[0; 8]),
        h2_frame(8, 0, 0, &[0, 0, 0x10, 0]),
        h2_frame(3, 0, 1, &[0, 0, 0, 8]),
        h2_frame(7, 0, 0, &[0; 8]),
    ]
    .concat();
    let get = h2_get();
    vec![
        [H2_PREFACE, &settings, &get].concat(),
        [H2_PREFACE, &settings, &post].concat(),
        [H2_PREFACE, &settings, &get, &tail].concat(),
        [h2c_get(), post].concat(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ]
}

pub fn api_requests() -> Vec<Vec<u8>> {
    [
        "/v1/metadata",
        "/v1/tasks",
        "/v1/services",
        "/v1/changes?after=0",
        "/metrics",
    ]
    .iter()
    .map(|p| format!("GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes())
    .chain([b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec()])
    .collect()
}
