"""The `mtor-cds` command: serve the service, report on card outcomes, and the integrator's kit
(call a hook, make a development signing key, load the fixture patients into a FHIR server)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

from cds_service.settings import SettingsError

EXIT_HTTP_ERROR = 1  # the service or a FHIR server answered an error, or could not be reached
EXIT_USAGE = 2  # bad arguments, files or settings
EXIT_FAILED = 1  # anything else that went wrong: one line on stderr, never a traceback
EXIT_INTERRUPTED = 130
FHIR_TOKEN_VARIABLE = "MTOR_CDS_FHIR_TOKEN"  # an environment variable keeps the token out of `ps` and shell history


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("mtor-cds")
    except PackageNotFoundError:  # running from a clone without installing: the checkout's pyproject.toml
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, ValueError, KeyError):
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtor-cds", description="CDS Hooks service for patients on mTOR inhibitors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the service (settings from CDS_* environment variables)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; with --production and neither --host nor "
                                      "--port, MTOR_CDS_BIND or PORT when set, as the container does)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--production", action="store_true", help="serve with gunicorn (cds_service/production.py settings)")
    _add_report(commands)
    _add_call(commands)
    _add_dev_key(commands)
    _add_fixtures(commands)
    _add_catalogue(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"mtor-cds: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mtor-cds: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- a person reads this: one line, not a traceback
        print(f"mtor-cds: {args.command} failed: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr)
        return EXIT_FAILED


DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # loopback: a local trial is never exposed to the network


def _serve(args: argparse.Namespace) -> int:
    from cds_service import create_app

    if args.production and args.host is None and args.port is None and (os.environ.get("MTOR_CDS_BIND") or os.environ.get("PORT")):
        from cds_service.production import run_gunicorn

        return run_gunicorn()  # where the environment says, as gunicorn with deploy/gunicorn.conf.py listens
    args.host = DEFAULT_HOST if args.host is None else args.host
    args.port = DEFAULT_PORT if args.port is None else args.port
    busy = _port_unavailable(args.host, args.port)
    if busy:  # before anything claims to listen
        print(f"mtor-cds: cannot listen on {args.host}:{args.port}: {busy}", file=sys.stderr)
        return EXIT_FAILED
    if args.production:
        from cds_service.production import run_gunicorn

        return run_gunicorn(args.host, args.port)
    app = create_app()
    settings = app.extensions["mtor_cds"].settings
    if settings.require_jwt and not settings.trusted_issuers:
        print("mtor-cds: no CDS_TRUSTED_ISSUERS: every call will be refused (401) until an EHR's issuer is trusted; "
              "for a local trial, start with CDS_REQUIRE_JWT=false", file=sys.stderr)
    print(f"mtor-cds listening on http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    return 0


def _port_unavailable(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (e.g. another process holds it), or None when it can."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# --- report -------------------------------------------------------------------------------------


def _moment(text: str, *, end_of_day: bool = False) -> datetime:
    """An ISO date or date-time (naive means UTC). A plain date as --until includes that whole day."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1 if end_of_day else 0), datetime.min.time())
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="card outcomes per topic: issued, suppressed, feedback coverage, acceptance, override rate (with reasons)",
        description="Reads the card store at CDS_DATABASE_URL. Dates are ISO (2026-11-01 or 2026-11-01T08:00Z), UTC "
        "unless they say otherwise; --until DATE includes that day.",
    )
    report.add_argument("--since", type=_moment, help="first day (or moment) of the period")
    report.add_argument("--until", type=lambda text: _moment(text, end_of_day=True), help="last day of the period")
    report.add_argument(
        "--html", metavar="FILE",
        help="also write a self-contained HTML page with a weekly chart per topic (needs: pip install 'mtor-cds[report]')",
    )


def _report(args: argparse.Namespace) -> int:
    from cds_service.report import ReportExtraMissing, run_report
    from cds_service.settings import Settings

    settings = Settings.from_env()
    missing = _missing_sqlite_file(settings.database_url)
    if missing:
        return _usage(f"no card store at {missing} (set CDS_DATABASE_URL to the service's database)")
    try:
        print(run_report(settings.database_url, args.since, args.until, args.html), end="")
    except ReportExtraMissing as missing_extra:
        print(f"mtor-cds report: {missing_extra}", file=sys.stderr)
        return 2
    if args.html:
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return 0


def _missing_sqlite_file(database_url: str) -> str | None:
    """The path of a SQLite card store that does not exist (opening it would create an empty one), else None."""
    import sqlalchemy as sa

    from cds_service.store.card_store import DEFAULT_DATABASE_URL

    try:
        url = sa.engine.make_url(database_url.strip() or DEFAULT_DATABASE_URL)
    except sa.exc.ArgumentError:
        return None  # the store says what is wrong with the URL
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return None if Path(url.database).is_file() else url.database


# --- call ---------------------------------------------------------------------------------------


def _add_call(commands) -> None:
    from cds_service.devkit.hook_request import HOOKS

    call = commands.add_parser(
        "call",
        help="build a CDS Hooks request, send it to the service and print the cards",
        description="Without --url the service runs in this process (create_app() on the CDS_* environment).",
    )
    call.add_argument("hook", choices=HOOKS)
    call.add_argument("--patient", required=True, metavar="FILE|ID",
                      help="a hook request (fhir_fixtures/*.json) or a Bundle of the patient's resources; "
                      "or a patient id on the --fhir server")
    call.add_argument("--draft", metavar="FILE", help="draft orders: a MedicationRequest (or other order) or a Bundle of them")
    call.add_argument("--select", nargs="+", metavar="REF", help="order-select: the selected drafts (default: all)")
    call.add_argument("--appointment", metavar="FILE",
                      help="appointment-book: the appointment being booked, an Appointment or a Bundle of them")
    call.add_argument("--url", help="base URL of a running service, e.g. http://127.0.0.1:8080")
    call.add_argument("--fhir", metavar="URL", help="FHIR server base URL, sent as fhirServer")
    call.add_argument("--prefetch", action="store_true", help="with --fhir and a patient id: run the prefetch queries here")
    _add_fhir_token(call)
    call.add_argument("--as-of", type=_day, metavar="DATE",
                      help="a fixture from fhir_fixtures/ speaks as of this day (default today): every date in it moves "
                      "by DATE minus the day scenarios.json's now names")
    call.add_argument("--sign-key", metavar="PEM", help="sign the call with this ES384 key (see dev-key)")
    call.add_argument("--issuer", metavar="ISS", help="the JWT iss claim (with --sign-key)")
    call.add_argument("--json", action="store_true", help="print the raw JSON response")


def _call(args: argparse.Namespace) -> int:
    from cds_service.devkit import hook_request, output, signing, transport
    from cds_service.knowledge import load_knowledge
    from cds_service.services import build_services
    from cds_service.settings import Settings

    if bool(args.sign_key) != bool(args.issuer):
        return _usage("--sign-key and --issuer go together")
    service_id = f"mtor-safety-{args.hook}"
    templates = build_services(load_knowledge())[service_id].prefetch
    token = args.fhir_token or None
    try:
        draft = hook_request.draft_orders_bundle(_read_fixture(args.draft, args.as_of)) if args.draft else None
        booking = hook_request.appointments_bundle(_read_fixture(args.appointment, args.as_of)) if args.appointment else None
        if os.path.isfile(args.patient):
            body = hook_request.request_from_fixture(
                args.hook, _read_fixture(args.patient, args.as_of), templates,
                draft_orders=draft, selections=args.select, fhir_server=args.fhir, access_token=token, appointments=booking,
            )
        elif args.as_of:
            return _usage("--as-of moves the dates of fixture files; a patient on a FHIR server has the dates it has")
        elif args.fhir:
            hook_request.check_patient(args.fhir, args.patient, token)
            prefetch = None
            if args.prefetch:
                max_pages = Settings.from_env().fhir_max_pages
                prefetch = hook_request.fetch_prefetch(args.fhir, args.patient, templates, token, max_pages)
            body = hook_request.build_hook_request(
                args.hook, args.patient, prefetch=prefetch, draft_orders=draft, selections=args.select,
                fhir_server=args.fhir, access_token=token, appointments=booking,
            )
        else:
            return _usage(f"--patient {args.patient!r} is no file; a patient id needs --fhir URL")
        token_for = None
        if args.sign_key:
            key = signing.load_private_key(Path(args.sign_key).read_bytes())
            token_for = lambda url: signing.sign_request_jwt(key, args.issuer, url)  # noqa: E731
    except hook_request.FhirRefused as exc:
        print(f"mtor-cds: {exc}", file=sys.stderr)
        return EXIT_HTTP_ERROR
    except (hook_request.RequestBuildError, signing.SigningKeyError, OSError) as exc:
        return _usage(str(exc))
    try:
        answer = transport.post_hook(body, service_id, args.url, token_for)
    except transport.ServiceUnreachable as exc:
        print(f"mtor-cds: {exc}", file=sys.stderr)
        return EXIT_HTTP_ERROR
    if answer.status != 200:
        print(output.format_error(answer.status, answer.body), end="", file=sys.stderr)
        return EXIT_HTTP_ERROR
    print(output.format_json(answer.json()) if args.json else output.format_cards(answer.json()), end="")
    return 0


def _read_fixture(path: str, as_of: date | None) -> dict:
    """A JSON file; one from a fixture set (a scenarios.json with `now` beside it) with its dates moved to as_of."""
    from cds_service.devkit import dates
    from cds_service.devkit.hook_request import RequestBuildError, read_json

    document = read_json(path)
    reference = dates.reference_day(path)
    if reference is None:
        if as_of:
            raise RequestBuildError(f"--as-of moves the dates of fixtures only: no {dates.SCENARIOS_FILE} beside {path}")
        return document
    shift = dates.days_to(as_of or dates.today(), reference)
    if shift:
        print(f"mtor-cds: {Path(path).name}: dates moved by {shift:+d} days (written for {reference})", file=sys.stderr)
    return dates.shift_dates(document, shift)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None


def _add_fhir_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fhir-token", metavar="TOKEN", default=os.environ.get(FHIR_TOKEN_VARIABLE, ""),
        help=f"access token for the FHIR server (default: ${FHIR_TOKEN_VARIABLE}, which keeps it out of the process list)",
    )


# --- dev-key ------------------------------------------------------------------------------------


def _add_dev_key(commands) -> None:
    dev_key = commands.add_parser(
        "dev-key",
        help="make an ES384 development key; print a CDS_TRUSTED_ISSUERS file that trusts it",
        description="Writes the private key (PEM, mode 600) and prints the trusted-issuers JSON on stdout, e.g. "
        "`mtor-cds dev-key --issuer https://ehr.example.test > trusted-issuers.json`. Local trials only.",
    )
    dev_key.add_argument("--issuer", required=True, metavar="ISS", help="the issuer the key signs as")
    dev_key.add_argument("--out", default="mtor-cds-dev-key.pem", metavar="PEM", help="private key file (default %(default)s)")


def _dev_key(args: argparse.Namespace) -> int:
    from cds_service.devkit import signing

    pem = signing.generate_private_key_pem()
    try:
        descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _usage(f"{args.out} exists; choose another --out or remove it")
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    document = signing.trusted_issuers_document(args.issuer, signing.load_private_key(pem))
    print(json.dumps(document, indent=2))
    print(f"private key written to {args.out}; sign with: mtor-cds call ... --sign-key {args.out} --issuer {args.issuer}",
          file=sys.stderr)
    return 0


# --- fixtures load ------------------------------------------------------------------------------


def _add_fixtures(commands) -> None:
    fixtures = commands.add_parser("fixtures", help="fixture patients and a FHIR server")
    actions = fixtures.add_subparsers(dest="fixtures_command", required=True)
    load = actions.add_parser(
        "load",
        help="load every fixture patient (PUT, idempotent) and the Synthea bundles (POST) into a FHIR server",
    )
    load.add_argument("--fhir", required=True, metavar="URL", help="FHIR server base URL")
    load.add_argument("--dir", help="fixture directory (default: the fhir_fixtures/ of this checkout, "
                      "else of the working directory)")
    load.add_argument("--server-ids", action="store_true",
                      help="for a server that assigns its own ids: conditional updates on a fixture identifier, "
                      "urn:uuid references; prints the ids the server chose")
    load.add_argument("--as-of", type=_day, metavar="DATE",
                      help="the fixtures speak as of this day (default today): every date moves by DATE minus the day "
                      "scenarios.json's now names")
    _add_fhir_token(load)


def default_fixture_dir() -> Path | None:
    """fhir_fixtures/ beside the package (a checkout, or an editable install), else in the working directory."""
    for candidate in (Path(__file__).resolve().parent.parent / "fhir_fixtures", Path.cwd() / "fhir_fixtures"):
        if candidate.is_dir():
            return candidate
    return None


def _fixtures(args: argparse.Namespace) -> int:
    from cds_service.devkit import dates
    from cds_service.devkit.fixtures import FixtureLoadError, load_fixtures

    directory = Path(args.dir) if args.dir else default_fixture_dir()
    if directory is None or not directory.is_dir():
        return _usage(f"no fixture directory at {args.dir or 'fhir_fixtures'}: name one with --dir")
    reference = dates.reference_day(directory)
    if args.as_of and reference is None:
        return _usage(f"--as-of needs a {dates.SCENARIOS_FILE} with a `now` in {directory}")
    shift = dates.days_to(args.as_of or dates.today(), reference)
    print(f"loading {directory} into {args.fhir}, dates moved by {shift:+d} days (written for {reference})", file=sys.stderr)

    def show(loaded) -> None:
        patients = ", ".join(f"Patient/{i}" for i in loaded.patient_ids)
        print(f"loaded {loaded.name}" + (f": {patients}" if patients else ""), flush=True)

    try:
        load_fixtures(args.fhir, directory, shift_days=shift, server_ids=args.server_ids,
                      access_token=args.fhir_token or None, progress=show)
    except FixtureLoadError as exc:
        print(f"mtor-cds: {exc}", file=sys.stderr)
        return EXIT_HTTP_ERROR
    return 0


# --- catalogue ----------------------------------------------------------------------------------


def _add_catalogue(commands) -> None:
    catalogue = commands.add_parser(
        "catalogue",
        help="write one self-contained HTML page of every card the fixtures produce, for clinical governance review",
    )
    catalogue.add_argument("--out", default="card-catalogue.html", metavar="FILE", help="HTML file (default %(default)s)")
    catalogue.add_argument("--fixtures", default="fhir_fixtures", metavar="DIR", help="fixture directory (default %(default)s)")


def _catalogue(args: argparse.Namespace) -> int:
    from cds_service.catalogue import CatalogueError, write_catalogue

    try:
        catalogue = write_catalogue(Path(args.out), Path(args.fixtures))
    except (CatalogueError, OSError) as exc:
        return _usage(str(exc))
    topics = len({entry.topic for entry in catalogue.entries})
    print(f"card catalogue written to {args.out}: {len(catalogue.entries)} cards in {topics} topics", file=sys.stderr)
    return 0


def _usage(message: str) -> int:
    print(f"mtor-cds: {message}", file=sys.stderr)
    return EXIT_USAGE


COMMANDS = {"serve": _serve, "report": _report, "call": _call, "dev-key": _dev_key, "fixtures": _fixtures, "catalogue": _catalogue}

if __name__ == "__main__":
    sys.exit(main())
