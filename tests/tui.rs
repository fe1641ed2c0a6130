//! The dashboard, headless: snapshots of each pane in its states (ratatui `TestBackend`), every
//! state drawn at sizes from 10x4 to 300x100, the app driven by actions, the real model thread
//! on a seeded tiny model, and the built `dsocr` in tmux (mock hub login, download, OCR).

use std::sync::mpsc;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use dsocr::tui::action::{Action, Input, Job, OcrRequest, Outcome, Secret, Update};
use dsocr::tui::app::{App, Overlay, Pane};
use dsocr::tui::config::{ColorEnv, Settings};
use dsocr::tui::keys::Command;
use dsocr::tui::state::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

mod common;

const TOKEN: &str = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

fn colors() -> ColorEnv {
    ColorEnv {
        no_color: false,
        truecolor: true,
    }
}

fn app() -> App {
    let header = HeaderInfo {
        version: "0.1.0".to_string(),
        endpoint: "https://huggingface.co".to_string(),
        offline: false,
        device: Check::Done(DeviceInfo::Cpu { threads: 16 }),
    };
    App::new(header, Settings::from_toml("", colors()))
}

fn key(code: KeyCode) -> Action {
    Input::Key(KeyEvent::new(code, KeyModifiers::NONE)).into()
}

fn ch(c: char) -> Action {
    key(KeyCode::Char(c))
}

fn ctrl_c() -> Action {
    Input::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)).into()
}

/// Apply actions (inputs or updates) in order; return every job they asked for.
fn drive<A: Into<Action>>(app: &mut App, actions: impl IntoIterator<Item = A>) -> Vec<Job> {
    actions.into_iter().flat_map(|a| app.update(a)).collect()
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    t.draw(|f| dsocr::tui::ui::draw(f, app)).expect("draw");
    t.backend().to_string()
}

fn masked(s: &str) -> String {
    format!("{}…{}", &s[..5], &s[s.len() - 4..])
}

fn whoami() -> WhoamiView {
    WhoamiView {
        user: "alice".to_string(),
        orgs: vec!["acme".to_string(), "ocr-lab".to_string()],
        token_name: Some("laptop".to_string()),
        role: Some("read".to_string()),
    }
}

// ---- the dashboard's states (each is drawn by the snapshot test below) -----------------------

fn no_token() -> App {
    let mut a = app();
    drive(
        &mut a,
        [
            Update::LoginStatus(Box::new(LoginState {
                diagnosis: Some(DiagnosisView {
                    code: "no-token".to_string(),
                    cause: "no token in HF_TOKEN, ~/.cache/huggingface/token or stored tokens"
                        .to_string(),
                    fix: "press n and paste a token from huggingface.co/settings/tokens"
                        .to_string(),
                }),
                ..LoginState::default()
            })),
            Update::Whoami(Err("not logged in".to_string())),
            Update::CacheScanned(Ok(Vec::new())),
        ],
    );
    a
}

fn shadowed() -> App {
    let mut a = app();
    drive(
        &mut a,
        [
            Update::LoginStatus(Box::new(LoginState {
                active: Some(TokenView {
                    masked: "hf_ba…dd0d".to_string(),
                    source: "HF_TOKEN".to_string(),
                }),
                others: vec![TokenView {
                    masked: masked(TOKEN),
                    source: "~/.cache/huggingface/token".to_string(),
                }],
                diagnosis: Some(DiagnosisView {
                    code: "shadowed-token".to_string(),
                    cause: "HF_TOKEN is invalid (401) and hides the token in ~/.cache/huggingface/token"
                        .to_string(),
                    fix: "unset HF_TOKEN (or set it to a valid token)".to_string(),
                }),
                ..LoginState::default()
            })),
            Update::Whoami(Err("401 Unauthorized: invalid token".to_string())),
            Update::CacheScanned(Ok(Vec::new())),
        ],
    );
    a
}

fn logged_in() -> App {
    let mut a = app();
    drive(
        &mut a,
        [
            Update::LoginStatus(Box::new(LoginState {
                active: Some(TokenView {
                    masked: masked(TOKEN),
                    source: "~/.cache/huggingface/token".to_string(),
                }),
                stored: vec![
                    StoredToken {
                        name: "laptop".to_string(),
                        masked: masked(TOKEN),
                        active: true,
                    },
                    StoredToken {
                        name: "work".to_string(),
                        masked: "hf_wo…rk42".to_string(),
                        active: false,
                    },
                ],
                ..LoginState::default()
            })),
            Update::Whoami(Ok(whoami())),
            Update::CacheScanned(Ok(vec![RepoRow {
                repo: "deepseek-ai/DeepSeek-OCR".to_string(),
                revisions: vec![RevisionRow {
                    commit: "9f30c71f441d010e5429c532364a86705536c53a".to_string(),
                    refs: vec!["main".to_string()],
                    size: 6_672_212_480 + 9_000_000,
                    missing: Vec::new(),
                }],
            }])),
        ],
    );
    a
}

fn gated() -> App {
    let mut a = logged_in();
    let (active, stored) = (a.login.active.clone(), a.login.stored.clone());
    drive(
        &mut a,
        [
            Update::LoginStatus(Box::new(LoginState {
                active,
                stored,
                diagnosis: Some(DiagnosisView {
                    code: "gated-repo".to_string(),
                    cause: "acme/gated-ocr is gated and alice has not been granted access"
                        .to_string(),
                    fix: "request access at https://huggingface.co/acme/gated-ocr, then press r"
                        .to_string(),
                }),
                ..LoginState::default()
            })),
            Update::Whoami(Ok(whoami())),
        ],
    );
    a.models.selected_model = ModelSource::Repo("acme/gated-ocr".to_string());
    a
}

fn start_download(a: &mut App) {
    a.focus = Pane::Models;
    let jobs = drive(a, [ch('d')]);
    assert!(
        matches!(jobs.as_slice(), [Job::Download { .. }]),
        "{jobs:?}"
    );
    drive(
        a,
        [
            Update::DownloadStarted(vec![
                ("config.json".to_string(), 2_544, 0),
                ("tokenizer.json".to_string(), 9_979_417, 0),
                (
                    "model-00001-of-000001.safetensors".to_string(),
                    6_672_212_480,
                    1_000_000_000,
                ),
            ]),
            Update::DownloadProgress {
                file: 0,
                done: 2_544,
                speed: None,
                eta: None,
            },
            Update::DownloadFile {
                file: 0,
                state: FileState::Done,
            },
            Update::DownloadProgress {
                file: 1,
                done: 9_979_417,
                speed: Some(90_000_000.0),
                eta: Some(Duration::from_secs(70)),
            },
            Update::DownloadFile {
                file: 1,
                state: FileState::Done,
            },
            Update::DownloadProgress {
                file: 2,
                done: 2_000_000_000,
                speed: Some(100_998_196.0),
                eta: Some(Duration::from_secs_f64(46.26)),
            },
        ],
    );
}

fn downloading() -> App {
    let mut a = logged_in();
    drive(&mut a, [Update::CacheScanned(Ok(Vec::new()))]);
    start_download(&mut a);
    a
}

fn download_failed() -> App {
    let mut a = downloading();
    drive(
        &mut a,
        [
            Update::DownloadFile {
                file: 2,
                state: FileState::Failed,
            },
            Update::DownloadFinished(Outcome::Failed(DiagnosisView {
                code: "connection-lost".to_string(),
                cause: "the connection to cas-bridge.xethub.hf.co was reset at 2.0 GB".to_string(),
                fix: "press R to resume; the 2.0 GB already on disk are kept".to_string(),
            })),
        ],
    );
    a
}

fn streaming() -> App {
    let mut a = logged_in();
    a.focus = Pane::Ocr;
    drive(&mut a, [ch('i')]);
    drive(&mut a, "page.png".chars().map(ch));
    let jobs = drive(&mut a, [key(KeyCode::Enter), ch('r')]);
    assert!(matches!(jobs.last(), Some(Job::Ocr(_))), "{jobs:?}");
    drive(
        &mut a,
        [
            Update::OcrPhase(OcrPhase::Vision),
            Update::OcrPhase(OcrPhase::Prefill),
            Update::OcrPhase(OcrPhase::Decode),
            Update::OcrText {
                text:
                    "<|ref|>title<|/ref|><|det|>[[72, 40, 928, 98]]<|/det|>\n# Quarterly report\n\n"
                        .to_string(),
                tokens: 30,
                elapsed: Duration::from_millis(4200),
                decode_elapsed: Duration::from_millis(1500),
            },
            Update::OcrText {
                text: "Revenue grew 12% over the".to_string(),
                tokens: 36,
                elapsed: Duration::from_millis(4500),
                decode_elapsed: Duration::from_millis(1800),
            },
        ],
    );
    a
}

fn page() -> PreviewImage {
    let (w, h) = (40u32, 52u32);
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let ink = (8..=44).contains(&y) && y % 4 == 0 && (4..36).contains(&x);
            rgb.extend_from_slice(if ink { &[30, 30, 30] } else { &[250, 250, 245] });
        }
    }
    PreviewImage {
        width: w,
        height: h,
        rgb,
    }
}

fn ocr_done() -> App {
    let mut a = streaming();
    drive(
        &mut a,
        [
            Update::Preview(Some(page())),
            Update::OcrText {
                text: " last year.\n".to_string(),
                tokens: 40,
                elapsed: Duration::from_millis(4800),
                decode_elapsed: Duration::from_millis(2000),
            },
            Update::OcrFinished(Outcome::Done(vec![
                BoxView {
                    label: "title".to_string(),
                    norm: [72.0, 40.0, 928.0, 98.0],
                    pixels: [57, 41, 743, 102],
                },
                BoxView {
                    label: "text".to_string(),
                    norm: [72.0, 130.0, 928.0, 400.0],
                    pixels: [57, 135, 743, 416],
                },
            ])),
        ],
    );
    a
}

/// A 3-page PDF as input, page 2 chosen and shown, running all pages: on page 2, one done.
fn pdf_running() -> App {
    let mut a = logged_in();
    a.focus = Pane::Ocr;
    drive(&mut a, [ch('i')]);
    drive(&mut a, "report.pdf".chars().map(ch));
    let jobs = drive(
        &mut a,
        [
            key(KeyCode::Enter),
            Update::DocumentOpened(Some(3)).into(),
            Update::Preview(Some(page())).into(),
            ch(']'),
            Update::Preview(Some(page())).into(),
            ch('a'),
            Update::OcrPage(PageProgress {
                page: 1,
                done: 0,
                total: 3,
            })
            .into(),
            Update::OcrPhase(OcrPhase::Decode).into(),
            Update::OcrText {
                text: "# Quarterly report\n\nRevenue grew".to_string(),
                tokens: 12,
                elapsed: Duration::from_millis(3000),
                decode_elapsed: Duration::from_millis(1000),
            }
            .into(),
            Update::OcrPage(PageProgress {
                page: 2,
                done: 1,
                total: 3,
            })
            .into(),
            Update::OcrText {
                text: "\n<--- Page Split --->\n".to_string(),
                tokens: 0,
                elapsed: Duration::from_millis(3100),
                decode_elapsed: Duration::ZERO,
            }
            .into(),
            Update::OcrPhase(OcrPhase::Decode).into(),
            Update::OcrText {
                text: "## Costs".to_string(),
                tokens: 3,
                elapsed: Duration::from_millis(5000),
                decode_elapsed: Duration::from_millis(300),
            }
            .into(),
        ],
    );
    assert!(matches!(jobs.last(), Some(Job::Ocr(_))), "{jobs:?}");
    a
}

fn error_dialog() -> App {
    let mut a = logged_in();
    drive(
        &mut a,
        [Update::Error {
            title: "Cannot load the model".to_string(),
            message: "model.safetensors is missing tensor sam_model.blocks.0.attn.qkv.weight; \
                      press v in Models to verify the download, then d to fetch it again"
                .to_string(),
        }],
    );
    a
}

fn all_states() -> Vec<(&'static str, App)> {
    let mut help = logged_in();
    drive(&mut help, [ch('?')]);
    let mut login_input = no_token();
    drive(
        &mut login_input,
        [ch('n'), Input::Paste(TOKEN.to_string()).into()],
    );
    let mut log = downloading();
    drive(&mut log, [ch('L')]);
    let mut mono = ocr_done();
    mono.settings = Settings::from_toml(
        "",
        ColorEnv {
            no_color: true,
            truecolor: false,
        },
    );
    vec![
        ("no_token", no_token()),
        ("shadowed_by_hf_token", shadowed()),
        ("logged_in", logged_in()),
        ("gated_repo", gated()),
        ("downloading", downloading()),
        ("download_failed", download_failed()),
        ("ocr_streaming", streaming()),
        ("ocr_done_with_boxes", ocr_done()),
        ("ocr_pdf_all_pages", pdf_running()),
        ("error_dialog", error_dialog()),
        ("help", help),
        ("login_input", login_input),
        ("log_pane", log),
        ("no_color", mono),
    ]
}

// ---- snapshots ------------------------------------------------------------------------------

#[test]
fn snapshots_of_every_state() {
    for (name, app) in all_states() {
        insta::assert_snapshot!(name, render(&app, 120, 36));
    }
}

#[test]
fn kitty_terminals_get_the_preview_as_an_image() {
    let mut a = ocr_done();
    let mut term = Terminal::new(TestBackend::new(120, 36)).expect("backend");
    let mut placed = None;
    term.draw(|f| placed = dsocr::tui::ui::draw_placed(f, &a))
        .expect("draw");
    assert!(placed.is_none(), "half blocks by default");
    assert!(term.backend().to_string().contains('▀'));

    a.graphics = dsocr::tui::graphics::Graphics::Kitty;
    term.draw(|f| placed = dsocr::tui::ui::draw_placed(f, &a))
        .expect("draw");
    let p = placed.take().expect("a placement");
    assert!(
        !term.backend().to_string().contains('▀'),
        "no half blocks under the image"
    );
    // In the right-hand part of the OCR pane, with the page's aspect (40x52 pixels; a cell is
    // about twice as high as wide).
    assert!(p.area.x >= 72 && p.area.right() <= 119, "{:?}", p.area);
    let aspect = f64::from(p.area.width) / f64::from(p.area.height * 2);
    assert!((aspect - 40.0 / 52.0).abs() < 0.1, "{:?}", p.area);
    // The page's pixels with the selected box (title, 72,40 - 928,98) outlined: its top edge
    // at y = 2 is one colour, different from the page there.
    let px = |x: u32, y: u32| {
        let i = ((y * 40 + x) * 3) as usize;
        p.image.rgb[i..i + 3].to_vec()
    };
    assert_eq!((p.image.width, p.image.height), (40, 52));
    assert_eq!(px(2, 2), px(30, 2));
    assert_ne!(px(2, 2), vec![250, 250, 245]);
    assert_eq!(px(20, 4), vec![250, 250, 245], "inside the box: the page");

    // At any size the image stays inside the screen.
    for w in [10u16, 30, 60, 89, 90, 120, 200, 300] {
        for h in [4u16, 10, 15, 16, 36, 100] {
            let mut term = Terminal::new(TestBackend::new(w, h)).expect("backend");
            term.draw(|f| placed = dsocr::tui::ui::draw_placed(f, &a))
                .expect("draw");
            if let Some(p) = placed.take() {
                assert!(
                    p.area.right() <= w && p.area.bottom() <= h && p.area.area() > 0,
                    "{w}x{h}: {:?}",
                    p.area
                );
            }
        }
    }

    // A dialog on top: no image (it would cover the dialog).
    drive(&mut a, [ch('?')]);
    term.draw(|f| placed = dsocr::tui::ui::draw_placed(f, &a))
        .expect("draw");
    assert!(placed.is_none());
}

#[test]
fn narrow_terminal_shows_the_focused_pane_only() {
    let mut a = downloading();
    let text = render(&a, 70, 24);
    assert!(text.contains("Models") && !text.contains("Login"), "{text}");
    drive(&mut a, [key(KeyCode::Tab)]);
    let text = render(&a, 70, 24);
    assert!(text.contains("OCR") && !text.contains("Models"), "{text}");
    insta::assert_snapshot!("narrow_ocr", text);
}

// ---- what the screens must say ---------------------------------------------------------------

#[test]
fn each_state_shows_its_cause_fix_and_figures() {
    let t = render(&no_token(), 120, 36);
    assert!(t.contains("none found") && t.contains("no-token") && t.contains("press n"));
    let t = render(&shadowed(), 120, 36);
    assert!(t.contains("HF_TOKEN") && t.contains("shadowed-token") && t.contains("unset HF_TOKEN"));
    assert!(t.contains("(not used)"));
    let t = render(&logged_in(), 120, 36);
    assert!(t.contains("alice") && t.contains("acme, ocr-lab") && t.contains("role read"));
    assert!(t.contains("6.7 GB") && t.contains("complete"));
    let t = render(&downloading(), 120, 36);
    // 2.01 GB of 6.68 GB: 30 %; the hub's speed and ETA as given.
    assert!(t.contains(" 30% 2.0 GB / 6.7 GB"), "{t}");
    assert!(t.contains("101.0 MB/s") && t.contains("ETA 00:46"), "{t}");
    let t = render(&download_failed(), 120, 36);
    assert!(t.contains("connection-lost") && t.contains("press R to resume"));
    let t = render(&streaming(), 120, 36);
    assert!(t.contains("decode") && t.contains("36 tok") && t.contains("20.0 tok/s"));
    assert!(t.contains("Revenue grew 12% over the"));
    let t = render(&ocr_done(), 120, 36);
    assert!(
        t.contains("2 boxes") && t.contains("title      72,40 928,98"),
        "{t}"
    );
    assert!(t.contains("▀"), "the page preview is drawn in half blocks");
    let t = render(&error_dialog(), 120, 36);
    assert!(t.contains("Cannot load the model") && t.contains("press v in Models"));
}

#[test]
fn the_token_is_never_drawn_in_full() {
    for (name, app) in all_states() {
        let t = render(&app, 200, 60);
        assert!(!t.contains(TOKEN), "{name} shows the whole token");
        assert!(
            !t.contains(&TOKEN[3..12]),
            "{name} shows the token's middle"
        );
    }
}

#[test]
fn help_lists_every_command() {
    let mut a = app();
    drive(&mut a, [ch('?')]);
    let t = render(&a, 100, 60);
    let km = a.settings.keymap.clone();
    for cmd in km.commands() {
        assert!(t.contains(cmd.description()), "help lacks {cmd:?}\n{t}");
    }
}

#[test]
fn footer_shows_only_keys_that_work_now() {
    let a = no_token();
    let t = render(&a, 160, 30);
    let footer = t.lines().nth(29).unwrap_or_default();
    assert!(
        footer.contains("log in") && !footer.contains("log out"),
        "{footer}"
    );
    assert!(!footer.contains("cancel"), "{footer}");
    let a = downloading();
    let t = render(&a, 160, 30);
    let footer = t.lines().nth(29).unwrap_or_default();
    assert!(
        footer.contains("x cancel") && !footer.contains("d download"),
        "{footer}"
    );
    assert!(footer.contains("Ctrl-c cancel job"), "{footer}");
}

// ---- every size -----------------------------------------------------------------------------

#[test]
fn every_state_draws_at_every_size_without_panic() {
    let widths = [
        10, 11, 13, 17, 20, 31, 40, 59, 60, 61, 80, 89, 90, 91, 120, 160, 200, 300,
    ];
    let heights = [4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 20, 30, 45, 60, 100];
    for (name, app) in all_states() {
        for w in widths {
            for h in heights {
                let result = std::panic::catch_unwind(|| render(&app, w, h));
                assert!(result.is_ok(), "{name} panics at {w}x{h}");
            }
        }
    }
}

// ---- the app driven by actions --------------------------------------------------------------

#[test]
fn focus_cycles_with_tab_and_includes_the_log_when_shown() {
    let mut a = app();
    assert_eq!(a.focus, Pane::Login);
    drive(&mut a, [key(KeyCode::Tab), key(KeyCode::Tab)]);
    assert_eq!(a.focus, Pane::Ocr);
    drive(&mut a, [key(KeyCode::Tab)]);
    assert_eq!(a.focus, Pane::Login);
    drive(&mut a, [key(KeyCode::BackTab)]);
    assert_eq!(a.focus, Pane::Ocr);
    drive(&mut a, [ch('L'), key(KeyCode::Tab)]);
    assert_eq!(a.focus, Pane::Log);
    drive(&mut a, [ch('L')]);
    assert_eq!(a.focus, Pane::Login, "hiding the log moves focus off it");
    drive(&mut a, [ch('l')]);
    assert_eq!(a.focus, Pane::Models, "vim l moves right");
}

#[test]
fn login_takes_a_pasted_token_and_never_logs_it() {
    let mut a = no_token();
    let jobs = drive(&mut a, [ch('n'), Input::Paste(format!("{TOKEN}\n")).into()]);
    assert!(jobs.is_empty());
    let jobs = drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(
        jobs,
        vec![Job::Login(
            Secret(TOKEN.to_string()),
            DEFAULT_MODEL.to_string()
        )]
    );
    assert!(!format!("{jobs:?}").contains(&TOKEN[3..]));
    assert!(a.overlays.is_empty());
    assert_eq!(a.login.whoami, Check::Checking);
    // Esc abandons an input without a job.
    let jobs = drive(&mut a, [ch('n'), ch('x'), key(KeyCode::Esc)]);
    assert!(jobs.is_empty() && a.overlays.is_empty());
}

#[test]
fn logout_asks_first_and_switch_uses_the_selected_token() {
    let mut a = logged_in();
    let jobs = drive(&mut a, [ch('o')]);
    assert!(jobs.is_empty());
    assert!(matches!(a.overlays.last(), Some(Overlay::Confirm { .. })));
    assert!(drive(&mut a, [ch('n')]).is_empty());
    assert_eq!(
        drive(&mut a, [ch('o'), ch('y')]),
        vec![Job::Logout(DEFAULT_MODEL.to_string())]
    );
    let jobs = drive(&mut a, [ch('j'), key(KeyCode::Enter)]);
    assert_eq!(
        jobs,
        vec![Job::SwitchToken {
            name: "work".to_string(),
            repo: DEFAULT_MODEL.to_string()
        }]
    );
    assert_eq!(
        drive(&mut a, [ch('r')]),
        vec![Job::RefreshLogin(DEFAULT_MODEL.to_string())]
    );
}

#[test]
fn download_progress_cancel_resume_and_rescan() {
    let mut a = downloading();
    let d = a.models.download.as_ref().expect("download view");
    assert_eq!(
        d.total(),
        dsocr::tui::progress::ByteProgress::new(2_009_981_961, 6_682_194_441)
    );
    assert!(a.busy());
    assert!(
        drive(&mut a, [ch('d')]).is_empty(),
        "no second download while one runs"
    );
    assert_eq!(drive(&mut a, [ch('x')]), vec![Job::CancelDownload]);
    drive(&mut a, [Update::DownloadFinished(Outcome::Cancelled)]);
    assert!(!a.busy());
    let jobs = drive(&mut a, [ch('R')]);
    assert_eq!(
        jobs,
        vec![Job::Download {
            repo: DEFAULT_MODEL.to_string(),
            revision: "main".to_string()
        }]
    );
    let jobs = drive(
        &mut a,
        [
            Update::DownloadStarted(vec![]),
            Update::DownloadFinished(Outcome::Done(())),
        ],
    );
    assert_eq!(
        jobs,
        vec![Job::ScanCache, Job::RefreshLogin(DEFAULT_MODEL.to_string())],
        "a finished download refreshes the cache and the diagnosis"
    );
}

#[test]
fn ctrl_c_cancels_the_running_job_then_quits() {
    let mut a = downloading();
    assert_eq!(drive(&mut a, [ctrl_c()]), vec![Job::CancelDownload]);
    assert!(!a.quit);
    drive(&mut a, [ctrl_c()]);
    assert!(a.quit);
    let mut idle = logged_in();
    drive(&mut idle, [ctrl_c()]);
    assert!(idle.quit, "with nothing running Ctrl-C quits");
    let mut ocr = streaming();
    assert_eq!(drive(&mut ocr, [ctrl_c()]), vec![Job::CancelOcr]);
    drive(
        &mut ocr,
        [Update::OcrFinished(Outcome::Cancelled).into(), ch('j')],
    );
    assert!(
        !ocr.quit,
        "another key in between disarms the second Ctrl-C"
    );
    assert_eq!(ocr.ocr.run, OcrRun::Cancelled);
}

#[test]
fn q_quits_but_types_inside_an_input() {
    let mut a = app();
    a.focus = Pane::Ocr;
    drive(&mut a, [ch('i'), ch('q')]);
    assert!(!a.quit);
    assert!(matches!(a.overlays.last(), Some(Overlay::Input { value, .. }) if value == "q"));
    drive(&mut a, [key(KeyCode::Esc), ch('q')]);
    assert!(a.quit);
}

#[test]
fn ocr_run_request_and_streaming() {
    let mut a = logged_in();
    a.focus = Pane::Ocr;
    assert!(
        drive(&mut a, [ch('r')]).is_empty(),
        "no run without an input"
    );
    let jobs = drive(
        &mut a,
        [ch('i')].into_iter().chain("scan.jpg".chars().map(ch)),
    );
    assert!(jobs.is_empty());
    let jobs = drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(
        jobs,
        vec![Job::LoadPreview {
            path: "scan.jpg".into(),
            password: None
        }]
    );
    drive(&mut a, [ch('m'), ch('m'), ch('p')]);
    let jobs = drive(&mut a, [ch('r')]);
    assert_eq!(
        jobs,
        vec![Job::Ocr(OcrRequest {
            model: ModelSource::Repo(DEFAULT_MODEL.to_string()),
            image: "scan.jpg".into(),
            pages: None,
            mode: dsocr::ocr::preprocess::Mode::Gundam,
            prompt: "<image>\n<|grounding|>OCR this image.".to_string(),
            max_new_tokens: 8192,
            device: "auto".to_string(),
            dtype: None,
            kernels: None,
            password: None,
        })]
    );
    assert_eq!(a.ocr.run, OcrRun::Running(OcrPhase::Load));
    assert!(
        drive(&mut a, [ch('r')]).is_empty(),
        "no second run while one runs"
    );
    drive(
        &mut a,
        [
            Update::OcrPhase(OcrPhase::Decode),
            Update::OcrText {
                text: "Hello".to_string(),
                tokens: 1,
                elapsed: Duration::from_secs(1),
                decode_elapsed: Duration::from_millis(100),
            },
            Update::OcrText {
                text: " world".to_string(),
                tokens: 2,
                elapsed: Duration::from_secs(1),
                decode_elapsed: Duration::from_millis(200),
            },
        ],
    );
    assert_eq!(a.ocr.output, "Hello world");
    assert_eq!(a.ocr.tokens_per_sec(), Some(10.0));
    drive(&mut a, [Update::OcrFinished(Outcome::Done(vec![]))]);
    assert_eq!(a.ocr.run, OcrRun::Done);
    let jobs = drive(&mut a, [ch('y'), ch('w')]);
    assert_eq!(jobs[0], Job::Copy("Hello world".to_string()));
    assert_eq!(jobs[1], Job::Save("dsocr-out".into()));
}

/// A logged-in dashboard on the OCR pane with `path` typed as its input, and the jobs that
/// choosing it started.
fn ocr_input(path: &str) -> (App, Vec<Job>) {
    let mut a = logged_in();
    a.focus = Pane::Ocr;
    drive(&mut a, [ch('i')]);
    drive(&mut a, path.chars().map(ch));
    let jobs = drive(&mut a, [key(KeyCode::Enter)]);
    (a, jobs)
}

#[test]
fn encrypted_pdf_asks_for_its_password() {
    let (mut a, _) = ocr_input("locked.pdf");
    let asked = |wrong| Update::PasswordNeeded {
        path: "locked.pdf".into(),
        wrong,
    };
    // A request for another input than the one chosen now is ignored.
    drive(
        &mut a,
        [Update::PasswordNeeded {
            path: "other.pdf".into(),
            wrong: false,
        }],
    );
    assert!(a.overlays.is_empty(), "{:?}", a.overlays);
    drive(&mut a, [asked(false)]);
    // Typed as is (spaces kept), shown as dots only.
    drive(&mut a, "my pw ".chars().map(ch));
    let t = render(&a, 160, 30);
    assert!(t.contains("encrypted") && t.contains("••••••"), "{t}");
    assert!(!t.contains("my pw"), "the password is on screen: {t}");
    let jobs = drive(&mut a, [key(KeyCode::Enter)]);
    let with_password = Some(Secret("my pw ".to_string()));
    assert_eq!(
        jobs,
        vec![Job::LoadPreview {
            path: "locked.pdf".into(),
            password: with_password.clone()
        }]
    );
    assert!(
        !format!("{jobs:?}").contains("my pw"),
        "the password would be logged"
    );
    // A wrong one: the reason over the input, which asks again.
    drive(&mut a, [asked(true)]);
    assert!(matches!(a.overlays.last(), Some(Overlay::Error { .. })));
    drive(&mut a, [key(KeyCode::Esc)]);
    assert!(matches!(a.overlays.last(), Some(Overlay::Input { .. })));
    drive(&mut a, [key(KeyCode::Esc)]);
    assert!(a.overlays.is_empty());
    // Once open, the pages and the run carry the password; a new input forgets it.
    drive(
        &mut a,
        [
            Update::DocumentOpened(Some(2)),
            Update::Preview(Some(page())),
        ],
    );
    let jobs = drive(&mut a, [ch(']')]);
    assert_eq!(
        jobs,
        vec![Job::PreviewPage {
            path: "locked.pdf".into(),
            page: 2,
            password: with_password.clone()
        }]
    );
    match drive(&mut a, [ch('r')]).as_slice() {
        [Job::Ocr(request)] => assert_eq!(request.password, with_password),
        other => panic!("expected a run, got {other:?}"),
    }
    drive(&mut a, [Update::OcrFinished(Outcome::Done(vec![]))]);
    drive(&mut a, [ch('i')]);
    drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(a.ocr.password, None);
}

#[test]
fn pdf_input_page_picker_and_run_this_page_or_all() {
    let (mut a, jobs) = ocr_input("doc.pdf");
    assert_eq!(
        jobs,
        vec![Job::LoadPreview {
            path: "doc.pdf".into(),
            password: None
        }]
    );
    assert_eq!(
        a.ocr.doc, None,
        "not known as a PDF before the worker says so"
    );
    drive(
        &mut a,
        [
            Update::DocumentOpened(Some(3)),
            Update::Preview(Some(page())),
        ],
    );
    assert_eq!(a.ocr.doc, Some(DocView { pages: 3, page: 1 }));
    let t = render(&a, 160, 30);
    assert!(t.contains("doc.pdf  page 1 of 3"), "{t}");
    let footer = t.lines().nth(29).unwrap_or_default();
    assert!(
        footer.contains("] next page") && footer.contains("a run all pages"),
        "{footer}"
    );
    assert!(!footer.contains("prev page"), "on page 1: {footer}");

    // [ on page 1 does nothing; ] moves on and asks for that page's preview.
    assert!(drive(&mut a, [ch('[')]).is_empty());
    let jobs = drive(&mut a, [ch(']'), ch(']')]);
    assert_eq!(
        jobs,
        vec![
            Job::PreviewPage {
                path: "doc.pdf".into(),
                page: 2,
                password: None
            },
            Job::PreviewPage {
                path: "doc.pdf".into(),
                page: 3,
                password: None
            }
        ]
    );
    assert!(drive(&mut a, [ch(']')]).is_empty(), "no page 4");
    let jobs = drive(&mut a, [ch('[')]);
    assert_eq!(
        jobs,
        vec![Job::PreviewPage {
            path: "doc.pdf".into(),
            page: 2,
            password: None
        }]
    );
    let t = render(&a, 160, 30);
    assert!(t.contains("page 2 of 3"), "{t}");
    let footer = t.lines().nth(29).unwrap_or_default();
    assert!(
        footer.contains("[ prev page") && footer.contains("] next page"),
        "{footer}"
    );

    // r runs the chosen page, a all of them.
    let run_pages = |jobs: Vec<Job>| match jobs.as_slice() {
        [Job::Ocr(req)] => {
            assert_eq!(req.image, std::path::PathBuf::from("doc.pdf"));
            req.pages.clone()
        }
        other => panic!("expected one run, got {other:?}"),
    };
    assert_eq!(run_pages(drive(&mut a, [ch('r')])), Some(vec![2]));
    assert!(
        drive(&mut a, [ch(']'), ch('a')]).is_empty(),
        "no paging while running"
    );
    drive(&mut a, [Update::OcrFinished(Outcome::Done(Vec::new()))]);
    assert_eq!(run_pages(drive(&mut a, [ch('a')])), Some(vec![1, 2, 3]));
    drive(
        &mut a,
        [Update::OcrPage(PageProgress {
            page: 3,
            done: 2,
            total: 3,
        })],
    );
    let t = render(&a, 160, 30);
    assert!(t.contains("page 3 (2/3 done)"), "{t}");
    drive(&mut a, [Update::OcrFinished(Outcome::Done(Vec::new()))]);
    let t = render(&a, 160, 30);
    assert!(!t.contains("2/3 done"), "progress gone when done: {t}");

    // A new image input forgets the document.
    drive(
        &mut a,
        [
            ch('i'),
            key(KeyCode::Enter),
            Update::DocumentOpened(None).into(),
        ],
    );
    assert_eq!(a.ocr.doc, None);
    assert_eq!(run_pages(drive(&mut a, [ch('r')])), None);
}

#[test]
fn custom_prompt_gets_the_image_tag() {
    let mut a = app();
    a.focus = Pane::Ocr;
    drive(
        &mut a,
        [ch('t')]
            .into_iter()
            .chain("Read the table.".chars().map(ch)),
    );
    drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(a.ocr.preset, None);
    assert_eq!(a.prompt(), "<image>\nRead the table.");
    // Two tags for one image: refused with the reason, over the input kept for fixing.
    let ctrl_u = Input::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL)).into();
    drive(&mut a, [ch('t'), ctrl_u]);
    drive(&mut a, "<image><image>".chars().map(ch));
    drive(&mut a, [key(KeyCode::Enter)]);
    assert!(
        matches!(a.overlays.last(), Some(Overlay::Error { message, .. }) if message.contains("2 <image> tags")),
        "{:?}",
        a.overlays
    );
    assert!(matches!(
        a.overlays.first(),
        Some(Overlay::Input { value, .. }) if value == "<image><image>"
    ));
    assert_eq!(a.prompt(), "<image>\nRead the table.");
}

#[test]
fn models_pane_selects_folders_repos_and_guards_delete() {
    let mut a = logged_in();
    a.focus = Pane::Models;
    let jobs = drive(&mut a, [ch('v')]);
    assert_eq!(jobs, vec![Job::Verify(DEFAULT_MODEL.to_string())]);
    drive(&mut a, [ch('D')]);
    let jobs = drive(&mut a, [ch('y')]);
    assert!(
        matches!(&jobs[..], [Job::Delete { repo, commit }] if repo == DEFAULT_MODEL && commit.starts_with("9f30c71f"))
    );
    drive(
        &mut a,
        [ch('f')].into_iter().chain("/models/ocr".chars().map(ch)),
    );
    drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(
        a.models.selected_model,
        ModelSource::Folder("/models/ocr".into())
    );
    assert!(
        drive(&mut a, [ch('d')]).is_empty(),
        "a local folder is not downloaded"
    );
    drive(
        &mut a,
        [
            ch('m'),
            Input::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL)).into(),
        ],
    );
    drive(&mut a, "acme/ocr".chars().map(ch));
    drive(&mut a, [key(KeyCode::Enter)]);
    assert_eq!(
        a.models.selected_model,
        ModelSource::Repo("acme/ocr".to_string())
    );
}

#[test]
fn error_dialog_closes_with_esc_and_ctrl_c_still_cancels_under_it() {
    let mut a = downloading();
    drive(
        &mut a,
        [Update::Error {
            title: "t".into(),
            message: "m".into(),
        }],
    );
    assert!(
        drive(&mut a, [ch('x')]).is_empty(),
        "keys under a dialog do nothing"
    );
    assert_eq!(drive(&mut a, [ctrl_c()]), vec![Job::CancelDownload]);
    drive(&mut a, [key(KeyCode::Esc)]);
    assert!(a.overlays.is_empty());
}

#[test]
fn config_file_rebinds_keys() {
    let mut a = app();
    a.settings = Settings::from_toml("[keys]\nquit = [\"Ctrl-q\"]\nhelp = [\"F2\"]\n", colors());
    drive(&mut a, [ch('q')]);
    assert!(!a.quit);
    drive(&mut a, [key(KeyCode::F(2))]);
    assert!(matches!(a.overlays.last(), Some(Overlay::Help { .. })));
    assert!(render(&a, 100, 60).contains("F2"));
    drive(&mut a, [key(KeyCode::Esc)]);
    drive(
        &mut a,
        [Input::Key(KeyEvent::new(
            KeyCode::Char('q'),
            KeyModifiers::CONTROL,
        ))],
    );
    assert!(a.quit);
    assert!(a.available(Command::Help));

    // [ocr] settings reach the run request.
    let mut a = app();
    a.settings = Settings::from_toml(
        "[ocr]\ndevice = \"cpu\"\ndtype = \"bf16\"\nmax_new_tokens = 64\n",
        colors(),
    );
    assert!(a.settings.warnings.is_empty(), "{:?}", a.settings.warnings);
    a.ocr.input = "page.png".to_string();
    a.focus = Pane::Ocr;
    match drive(&mut a, [ch('r')]).as_slice() {
        [Job::Ocr(req)] => {
            assert_eq!(
                (
                    req.device.as_str(),
                    req.dtype.as_deref(),
                    req.max_new_tokens
                ),
                ("cpu", Some("bf16"), 64)
            );
        }
        other => panic!("expected one OCR job, got {other:?}"),
    }
    let bad = Settings::from_toml("[ocr]\nthreads = 3\n", colors());
    assert!(
        bad.warnings.iter().any(|w| w.contains("threads")),
        "{:?}",
        bad.warnings
    );
}

#[test]
fn event_loop_applies_queued_actions_and_dispatches_jobs() {
    let (tx, rx) = mpsc::channel();
    for a in [
        key(KeyCode::Char('r')),
        Update::LoginStatus(Box::default()).into(),
        Update::Whoami(Ok(whoami())).into(),
        ch('q'),
    ] {
        tx.send(a).expect("send");
    }
    let mut app = app();
    let mut term = Terminal::new(TestBackend::new(100, 30)).expect("backend");
    let mut jobs = Vec::new();
    let stats = dsocr::tui::event_loop(&mut term, &mut app, &rx, |j| jobs.push(j)).expect("loop");
    assert!(app.quit);
    assert_eq!(jobs, vec![Job::RefreshLogin(DEFAULT_MODEL.to_string())]);
    assert!(stats.frames >= 1);
    assert!(term.backend().to_string().contains("alice"));
}

// ---- the real model thread ------------------------------------------------------------------

/// The next update from the workers, within `secs` seconds.
fn next_update(rx: &mpsc::Receiver<Action>, secs: u64) -> Update {
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Action::Worker(update)) => update,
        other => panic!("expected a worker's update, got {other:?}"),
    }
}

/// Updates from the workers until (and including) the next `OcrFinished`.
fn until_finished(rx: &mpsc::Receiver<Action>) -> Vec<Update> {
    let mut got = Vec::new();
    loop {
        let a = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Action::Worker(update)) => update,
            other => panic!("no OcrFinished ({other:?}); got {got:?}"),
        };
        let done = matches!(a, Update::OcrFinished(_));
        got.push(a);
        if done {
            return got;
        }
    }
}

fn phases(actions: &[Update]) -> Vec<OcrPhase> {
    actions
        .iter()
        .filter_map(|a| match a {
            Update::OcrPhase(p) => Some(*p),
            _ => None,
        })
        .collect()
}

#[test]
fn model_thread_streams_reuses_the_session_and_cancels() {
    let tmp = common::scratch("tui-model");
    let dir = tmp.path();
    let model = dir.join("model");
    common::make_model(&model);
    let (tx, rx) = mpsc::channel();
    let mut workers =
        dsocr::tui::tasks::Workers::new(dsocr::tui::action::ActionSender(tx)).expect("workers");
    let request = |max_new_tokens| OcrRequest {
        model: ModelSource::Folder(model.clone()),
        image: common::fixtures().join("preprocess/sources/letter-1275x1650.png"),
        pages: None,
        mode: dsocr::ocr::preprocess::Mode::Base,
        prompt: "<image>\nFree OCR.".to_string(),
        max_new_tokens,
        device: "cpu".to_string(),
        dtype: None,
        kernels: None,
        password: None,
    };

    // First run: loads, then every phase in order, one text action per token.
    workers.dispatch(Job::Ocr(request(8)));
    let got = until_finished(&rx);
    assert_eq!(
        phases(&got),
        [
            OcrPhase::Load,
            OcrPhase::Preprocess,
            OcrPhase::Vision,
            OcrPhase::Prefill,
            OcrPhase::Decode
        ]
    );
    let tokens: Vec<usize> = got
        .iter()
        .filter_map(|a| match a {
            Update::OcrText { tokens, .. } => Some(*tokens),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.first(), Some(&1));
    assert_eq!(tokens.last(), Some(&8), "{tokens:?}");
    assert!(
        matches!(got.last(), Some(Update::OcrFinished(Outcome::Done(_)))),
        "{got:?}"
    );
    // The app shows it: text, 8 tokens, a speed, done.
    let mut a = logged_in();
    a.ocr.input = "page.png".to_string();
    a.focus = Pane::Ocr;
    drive(&mut a, [ch('r')]);
    drive(&mut a, got.clone());
    assert_eq!(a.ocr.run, OcrRun::Done);
    assert_eq!(a.ocr.tokens, 8);
    assert!(!a.ocr.output.is_empty());
    assert!(a.ocr.tokens_per_sec().is_some_and(|s| s > 0.0));

    // Save writes the library's output files; the raw text is what streamed.
    let streamed: String = got
        .iter()
        .filter_map(|a| match a {
            Update::OcrText { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    workers.dispatch(Job::Save(dir.join("saved")));
    let saved = dir.join("saved/letter-1275x1650");
    match next_update(&rx, 60) {
        Update::Saved(path) => assert_eq!(path, saved),
        other => panic!("expected Saved, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(saved.join("result_raw.txt")).expect("result_raw.txt"),
        streamed
    );
    for file in ["result.mmd", "boxes.json", "result_with_boxes.jpg"] {
        assert!(saved.join(file).is_file(), "{file} missing");
    }

    // Second run on the same model: no load phase.
    workers.dispatch(Job::Ocr(request(4)));
    let got = until_finished(&rx);
    assert_eq!(phases(&got)[0], OcrPhase::Preprocess, "{got:?}");

    // A long run cancelled once text streams: stops with a typed cancel, promptly.
    workers.dispatch(Job::Ocr(request(4000)));
    loop {
        if matches!(next_update(&rx, 120), Update::OcrText { tokens: 3.., .. }) {
            break;
        }
    }
    workers.dispatch(Job::CancelOcr);
    let got = until_finished(&rx);
    assert!(
        matches!(got.last(), Some(Update::OcrFinished(Outcome::Cancelled))),
        "{got:?}"
    );
    let streamed_after = got
        .iter()
        .filter(|a| matches!(a, Update::OcrText { .. }))
        .count();
    assert!(
        streamed_after < 100,
        "{streamed_after} tokens after the cancel"
    );
    workers.dispatch(Job::Save(dir.join("saved")));
    match next_update(&rx, 60) {
        Update::Error { title, .. } => assert_eq!(title, "Nothing to save"),
        other => panic!("a cancelled run has nothing to save, got {other:?}"),
    }

    // A repo that is not cached: a message that says what to do.
    let mut missing = request(4);
    missing.model = ModelSource::Repo("nobody/no-such-model".to_string());
    workers.dispatch(Job::Ocr(missing));
    match until_finished(&rx).last() {
        Some(Update::OcrFinished(Outcome::Failed(m))) => {
            assert!(m.contains("press d in Models"), "{m}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    workers.shutdown();
}

#[test]
fn model_thread_runs_pdf_pages_and_saves_the_document_outputs() {
    let tmp = common::scratch("tui-pdf");
    let dir = tmp.path();
    let model = dir.join("model");
    common::make_model(&model);
    let pdf = common::fixtures().join("pdf/three-pages.pdf");
    let (tx, rx) = mpsc::channel();
    let mut workers =
        dsocr::tui::tasks::Workers::new(dsocr::tui::action::ActionSender(tx)).expect("workers");
    let next = || next_update(&rx, 60);

    // A new PDF input: its page count, then page 1's preview; another page on request.
    workers.dispatch(Job::LoadPreview {
        path: pdf.clone(),
        password: None,
    });
    assert!(matches!(next(), Update::DocumentOpened(Some(3))));
    let first = match next() {
        Update::Preview(Some(p)) => p,
        other => panic!("expected a preview, got {other:?}"),
    };
    // Letter-sized: 612x792 points.
    assert_eq!(first.height, 320);
    assert!((246..=248).contains(&first.width), "{}", first.width);
    workers.dispatch(Job::PreviewPage {
        path: pdf.clone(),
        page: 2,
        password: None,
    });
    match next() {
        Update::Preview(Some(p)) => assert_ne!(p.rgb, first.rgb, "page 2 is not page 1"),
        other => panic!("expected a preview, got {other:?}"),
    }
    // An encrypted PDF: no page count, and a password asked for; a wrong one is asked for
    // again, the right one opens it.
    let encrypted = common::fixtures().join("pdf/encrypted.pdf");
    for (password, wrong) in [(None, false), (Some("wrong"), true)] {
        workers.dispatch(Job::LoadPreview {
            path: encrypted.clone(),
            password: password.map(|p| Secret(p.to_string())),
        });
        assert!(matches!(next(), Update::DocumentOpened(None)));
        match next() {
            Update::PasswordNeeded { path, wrong: w } => {
                assert_eq!((path, w), (encrypted.clone(), wrong));
            }
            other => panic!("expected a password request, got {other:?}"),
        }
        assert!(matches!(next(), Update::Preview(None)));
    }
    workers.dispatch(Job::LoadPreview {
        path: encrypted.clone(),
        password: Some(Secret("secret".to_string())),
    });
    assert!(matches!(next(), Update::DocumentOpened(Some(3))));
    assert!(matches!(next(), Update::Preview(Some(_))));

    // Pages 1 and 3: per-page progress, a page split between them, then save.
    workers.dispatch(Job::Ocr(OcrRequest {
        model: ModelSource::Folder(model.clone()),
        image: pdf.clone(),
        pages: Some(vec![1, 3]),
        mode: dsocr::ocr::preprocess::Mode::Tiny,
        prompt: "<image>\nFree OCR.".to_string(),
        max_new_tokens: 4,
        device: "cpu".to_string(),
        dtype: Some("f32".to_string()),
        kernels: None,
        password: None,
    }));
    let got = until_finished(&rx);
    let progress: Vec<PageProgress> = got
        .iter()
        .filter_map(|a| match a {
            Update::OcrPage(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        [
            PageProgress {
                page: 1,
                done: 0,
                total: 2
            },
            PageProgress {
                page: 3,
                done: 1,
                total: 2
            }
        ]
    );
    assert!(
        matches!(got.last(), Some(Update::OcrFinished(Outcome::Done(_)))),
        "{got:?}"
    );
    let streamed: String = got
        .iter()
        .filter_map(|a| match a {
            Update::OcrText { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed.matches("<--- Page Split --->").count(), 1);
    workers.dispatch(Job::Save(dir.join("saved")));
    let saved = dir.join("saved/three-pages");
    match next() {
        Update::Saved(path) => assert_eq!(path, saved),
        other => panic!("expected Saved, got {other:?}"),
    }
    let raw = |n: usize| {
        std::fs::read_to_string(saved.join(format!("page-{n}/result_raw.txt"))).expect("raw")
    };
    assert_eq!(
        streamed,
        format!("{}{}{}", raw(1), dsocr::document::PAGE_SPLIT, raw(3)),
        "the pages' raw files are what streamed"
    );
    assert!(!saved.join("page-2").exists());
    let mmd = std::fs::read_to_string(saved.join("three-pages.mmd")).expect("mmd");
    let page_mmd = |n: usize| {
        std::fs::read_to_string(saved.join(format!("page-{n}/result.mmd"))).expect("mmd")
    };
    assert_eq!(
        mmd,
        format!(
            "{}{}{}",
            page_mmd(1),
            dsocr::document::PAGE_SPLIT,
            page_mmd(3)
        )
    );
    let report = common::read_json(&saved.join("report.json"));
    assert_eq!(report["page_count"], 3);
    assert_eq!(report["totals"]["pages_ok"], 2);
    assert_eq!(report["pages"][1]["page"], 3);

    // Run on an encrypted PDF (its page count never came): the document's cause, not "not an
    // image".
    workers.dispatch(Job::Ocr(OcrRequest {
        model: ModelSource::Folder(model.clone()),
        image: common::fixtures().join("pdf/encrypted.pdf"),
        pages: None,
        mode: dsocr::ocr::preprocess::Mode::Tiny,
        prompt: "<image>\nFree OCR.".to_string(),
        max_new_tokens: 4,
        device: "cpu".to_string(),
        dtype: Some("f32".to_string()),
        kernels: None,
        password: None,
    }));
    match until_finished(&rx).last() {
        Some(Update::OcrFinished(Outcome::Failed(m))) => {
            assert!(m.contains("encrypted.pdf is encrypted"), "{m}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // With its password, it runs.
    workers.dispatch(Job::Ocr(OcrRequest {
        model: ModelSource::Folder(model.clone()),
        image: common::fixtures().join("pdf/encrypted.pdf"),
        pages: Some(vec![2]),
        mode: dsocr::ocr::preprocess::Mode::Tiny,
        prompt: "<image>\nFree OCR.".to_string(),
        max_new_tokens: 4,
        device: "cpu".to_string(),
        dtype: Some("f32".to_string()),
        kernels: None,
        password: Some(Secret("secret".to_string())),
    }));
    match until_finished(&rx).last() {
        Some(Update::OcrFinished(Outcome::Done(_))) => {}
        other => panic!("expected the run to finish, got {other:?}"),
    }
    workers.shutdown();
}

// ---- end to end, in a real terminal -----------------------------------------------------------

/// A tmux server of its own running the built `dsocr` in a 160x48 window.
struct Tmux {
    /// The server's socket, in the scratch folder (so it goes with it).
    socket: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Tmux {
    fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let socket = dir.join("tmux.sock");
        let t = Tmux {
            socket,
            dir: dir.to_path_buf(),
        };
        // A shell runs dsocr, then records the terminal modes it left behind.
        let stty = dir.join("stty-after");
        let script = format!(
            "{} ; stty -a > {} ; echo DSOCR-EXITED ; sleep 30",
            env!("CARGO_BIN_EXE_dsocr"),
            stty.display()
        );
        let mut args: Vec<String> = ["new-session", "-d", "-x", "160", "-y", "48"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(script);
        t.tmux(&args.iter().map(String::as_str).collect::<Vec<_>>());
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "0", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }

    /// Wait until the screen satisfies `pred`; return that screen (panics with the last one).
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = std::time::Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; screen:\n{s}\nlog:\n{}",
                std::fs::read_to_string(self.dir.join("state/dsocr/dsocr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// The tokens/s figure on a status line (`... 12 tok  35.2 tok/s ...`).
fn speed(line: &str) -> Option<f64> {
    let before = &line[..line.find(" tok/s")?];
    before.split_whitespace().last()?.parse().ok()
}

/// A word (3 to 20 printable ASCII characters, between spaces) of the text the dashboard's
/// default run (base mode, document prompt) streams first, computed with the library.
fn first_word(model: &std::path::Path, page: &std::path::Path) -> String {
    use dsocr::ocr::session::{Event, RunOptions, Session};
    let session = Session::load(model, tch::Device::Cpu, tch::Kind::Float).expect("model loads");
    let opts = RunOptions {
        mode: dsocr::ocr::preprocess::Mode::Base,
        prompt: dsocr::ocr::prompt::Preset::Document.prompt(),
        max_new_tokens: 40,
        ..RunOptions::default()
    };
    let mut text = String::new();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    session
        .run(page, &opts, &cancel, |e| {
            if let Event::Text { piece, .. } = e {
                text.push_str(&piece);
            }
        })
        .expect("library run");
    text.split_whitespace()
        .find(|w| (3..=20).contains(&w.len()) && w.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| panic!("no plain word in the first 40 tokens: {text:?}"))
        .to_string()
}

#[test]
fn end_to_end_in_tmux_against_the_mock_hub() {
    use dsocr::hub::mock::{self, Access, MockConfig, MockHub};
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let config = MockConfig {
        repos: vec![mock::demo_repo(Access::Public, 16 * 1024 * 1024)],
        cdn_bytes_per_sec: Some(4 * 1024 * 1024),
        ..MockConfig::default()
    };
    let hub = rt.block_on(MockHub::start(config)).expect("mock hub");
    let tmp = common::scratch("tui-e2e");
    let dir = tmp.path();
    let path = |p: &str| dir.join(p).display().to_string();
    let env = [
        ("HOME", path("home")),
        ("HF_HOME", path("hf")),
        ("HF_ENDPOINT", hub.endpoint.clone()),
        ("XDG_CONFIG_HOME", path("config")),
        ("XDG_STATE_HOME", path("state")),
        ("XDG_CACHE_HOME", path("cache")),
        ("TERM", "xterm-256color".to_string()),
    ];
    // The OCR model: a seeded tiny model; what it writes first, from the library directly.
    let model = dir.join("model");
    common::make_model(&model);
    let page = common::fixtures().join("preprocess/sources/letter-1275x1650.png");
    let expected_word = first_word(&model, &page);
    let config = dir.join("config/dsocr");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("config.toml"),
        "[ocr]\ndevice = \"cpu\"\nmax_new_tokens = 4000\n",
    )
    .expect("config file");
    let t = Tmux::start(dir, &env);
    let s = t.wait_for("the dashboard", |s| {
        s.contains("Login") && s.contains("Models")
    });
    assert!(s.contains(&hub.endpoint), "{s}");
    t.wait_for("the no-token state", |s| s.contains("none found"));

    // Log in: paste the token into the masked input.
    t.keys(&["n"]);
    t.tmux(&["send-keys", "-t", "0", "-l", mock::TOKEN_GRANTED]);
    let s = t.wait_for("the masked input", |s| s.contains("hf_•••"));
    assert!(
        !s.contains(mock::TOKEN_GRANTED),
        "the token shows in full:\n{s}"
    );
    t.keys(&["Enter"]);
    let s = t.wait_for("whoami", |s| {
        s.contains("alice") && s.contains("dsocr-mock")
    });
    assert!(s.contains("acme"), "{s}");
    assert!(!s.contains(mock::TOKEN_GRANTED), "{s}");

    // Download: progress shows while bytes arrive, then the cache lists the model.
    t.keys(&["Tab", "d"]);
    let s = t.wait_for("download progress", |s| {
        s.contains("downloading") && (s.contains("kB/s") || s.contains("MB/s"))
    });
    assert!(s.contains("model-00001"), "{s}");
    let s = t.wait_for("the finished download", |s| s.contains("done, verified"));
    assert!(s.contains("100%"), "{s}");
    t.wait_for("the cache list", |s| s.contains("complete"));

    // OCR on a local model folder: phase, tokens/s and the streamed text show while it runs;
    // Ctrl-C stops it.
    t.keys(&["f"]);
    t.tmux(&["send-keys", "-t", "0", "-l", &model.display().to_string()]);
    t.keys(&["Enter", "Tab", "i"]);
    t.tmux(&["send-keys", "-t", "0", "-l", &page.display().to_string()]);
    t.keys(&["Enter"]);
    let s = t.wait_for("the input and its preview", |s| {
        s.contains("letter-1275x1650.png")
    });
    assert!(
        !s.contains(&expected_word),
        "{expected_word:?} shows before the run:\n{s}"
    );
    t.keys(&["r"]);
    let s = t.wait_for("decoding with a speed", |s| {
        s.lines()
            .any(|l| l.contains(" decode ") && speed(l).is_some_and(|v| v > 0.0))
    });
    assert!(s.contains("tok/s"), "{s}");
    let s = t.wait_for("the streamed text", |s| s.contains(&expected_word));
    assert!(!s.contains("OCR failed"), "{s}");
    // The first Ctrl-C cancels the run and the dashboard stays.
    t.keys(&["C-c"]);
    let s = t.wait_for("the cancelled run", |s| s.contains("cancelled"));
    assert!(!s.contains("DSOCR-EXITED"), "{s}");

    // A PDF: page count and picker, all pages run with per-page progress; Ctrl-C stops it.
    let pdf = common::fixtures().join("pdf/three-pages.pdf");
    t.keys(&["i", "C-u"]);
    t.tmux(&["send-keys", "-t", "0", "-l", &pdf.display().to_string()]);
    t.keys(&["Enter"]);
    let s = t.wait_for("the page count", |s| s.contains("page 1 of 3"));
    assert!(s.contains("] next page"), "{s}");
    t.keys(&["]"]);
    t.wait_for("page 2", |s| s.contains("page 2 of 3"));
    t.keys(&["a"]);
    let s = t.wait_for("page 1 running", |s| s.contains("page 1 (0/3 done)"));
    assert!(!s.contains("OCR failed"), "{s}");
    t.wait_for("decoding page 1", |s| {
        s.lines()
            .any(|l| l.contains(" decode ") && l.contains("page 1 (0/3 done)"))
    });
    t.keys(&["C-c"]);
    t.wait_for("the cancelled PDF run", |s| s.contains("cancelled"));

    // Quit; the shell after dsocr sees a restored terminal.
    t.keys(&["q"]);
    t.wait_for("dsocr to exit", |s| s.contains("DSOCR-EXITED"));
    let alt = t.tmux(&["display-message", "-p", "-t", "0", "#{alternate_on}"]);
    assert_eq!(alt.trim(), "0", "still on the alternate screen");
    let stty = std::fs::read_to_string(dir.join("stty-after")).expect("stty output");
    assert!(
        stty.contains(" icanon") && stty.contains(" echo"),
        "raw mode left on: {stty}"
    );
    drop(t);
}

#[test]
fn login_problems_wrap_with_a_hanging_indent_and_scroll() {
    let mut a = shadowed();
    // Narrow and short: only the focused Login pane, too small for every row.
    let before = render(&a, 60, 9);
    assert!(
        before.contains("Problem ✗ shadowed-token"),
        "the problem is shown: {before}"
    );
    assert!(
        !before.contains("Fix "),
        "the fix is below the fold: {before}"
    );
    assert!(
        before.contains("┃        "),
        "continuation lines are indented under the value: {before}"
    );
    assert!(
        !before.contains("401 Unauthorized"),
        "the User row does not repeat the problem: {before}"
    );
    drive(&mut a, [key(KeyCode::PageDown)]);
    let after = render(&a, 60, 9);
    assert!(
        after.contains("Fix     unset HF_TOKEN"),
        "scrolled: {after}"
    );
    drive(&mut a, [key(KeyCode::Home)]);
    assert_eq!(render(&a, 60, 9), before, "Home scrolls back to the top");
}

#[test]
fn header_shows_a_local_dsocr_serve() {
    let mut a = app();
    let header = |a: &App| render(a, 160, 30).lines().next().unwrap_or("").to_string();
    assert!(!header(&a).contains("serve"), "{}", header(&a));
    let probe = |ready: bool, status: &str| {
        Update::Serve(Some(ServeProbe {
            addr: "127.0.0.1:8000".into(),
            ready,
            status: status.into(),
        }))
    };
    drive(&mut a, [probe(true, "ready")]);
    assert!(
        header(&a).contains("serve 127.0.0.1:8000 ready"),
        "{}",
        header(&a)
    );
    drive(&mut a, [probe(false, "model_missing")]);
    assert!(
        header(&a).contains("serve 127.0.0.1:8000 model_missing"),
        "{}",
        header(&a)
    );
    drive(&mut a, [Update::Serve(None)]);
    assert!(!header(&a).contains("serve"), "{}", header(&a));
    // Looked for at start; a tick right after does not ask again.
    assert!(a.startup_jobs().contains(&Job::ProbeServe));
    assert!(drive(&mut a, [Input::Tick]).is_empty());
}
