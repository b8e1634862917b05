"""Checklist item 24: property tests on the binary render payloads (Hypothesis) and Schemathesis against
the published OpenAPI of a real service process, with a bounded number of examples: zero 5xx."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pointillist.server.render_payload import (
    FrameObject,
    ObjectAttributes,
    PayloadError,
    PayloadLimits,
    RenderRequest,
    encode_object,
    encode_render,
    parse_object,
    parse_render,
)

LIMITS = PayloadLimits(max_gaussians_per_object=64, max_objects_per_render=4, max_side=256, max_pixels=256 * 256)
PROPS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
object_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@st.composite
def render_requests(draw) -> RenderRequest:
    m = draw(st.integers(1, LIMITS.max_objects_per_render))
    ids = draw(st.lists(object_ids, min_size=m, max_size=m, unique=True))
    objects = []
    for object_id in ids:
        n = draw(st.integers(1, 12))
        means = np.array(draw(st.lists(finite, min_size=3 * n, max_size=3 * n)), np.float32).reshape(n, 3)
        quats = np.array(draw(st.lists(st.floats(0.125, 1.0, width=32), min_size=4 * n, max_size=4 * n)),
                         np.float32).reshape(n, 4)
        objects.append(FrameObject(object_id, means, quats))
    near = draw(st.floats(2.0**-10, 1.0, width=32))
    far = draw(st.floats(2.0, 1e4, width=32))
    viewmat = np.eye(4, dtype=np.float32)
    viewmat[:3, :4] = np.array(draw(st.lists(finite, min_size=12, max_size=12)), np.float32).reshape(3, 4)
    K = np.array([[draw(st.floats(1, 1e4, width=32)), 0, draw(finite)], [0, draw(st.floats(1, 1e4, width=32)), draw(finite)],
                  [0, 0, 1]], np.float32)
    raw = draw(st.booleans())
    return RenderRequest(width=draw(st.integers(1, 256)), height=draw(st.integers(1, 256)), near=near, far=far,
                         background=np.array(draw(st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3)), np.float32),
                         viewmat=viewmat, K=K, objects=objects, raw=raw, want_depth=raw and draw(st.booleans()))


@st.composite
def object_payloads(draw) -> ObjectAttributes:
    n = draw(st.integers(1, 16))
    rgb = draw(st.booleans())
    degree = 0 if rgb else draw(st.integers(0, 3))
    k = (degree + 1) ** 2

    def arr(count, elements):
        return np.array(draw(st.lists(elements, min_size=count, max_size=count)), np.float32)

    rest = arr(4 * n, st.floats(0.125, 1, width=32)).reshape(n, 4) if draw(st.booleans()) else None
    return ObjectAttributes(opacities=arr(n, st.floats(0, 1, width=32)),
                            scales=arr(3 * n, st.floats(2.0**-13, 1, width=32)).reshape(n, 3),
                            colors=arr(3 * n, st.floats(0, 1, width=32)).reshape(n, 3) if rgb else None,
                            sh=None if rgb else arr(3 * k * n, finite).reshape(n, k, 3), rest_quats=rest)


def _same_request(a: RenderRequest, b: RenderRequest) -> None:
    assert (a.width, a.height, a.raw, a.want_depth) == (b.width, b.height, b.raw, b.want_depth)
    assert np.float32(a.near) == np.float32(b.near) and np.float32(a.far) == np.float32(b.far)
    for x, y in ((a.viewmat, b.viewmat), (a.K, b.K), (a.background, b.background)):
        np.testing.assert_array_equal(np.asarray(x, np.float32), y)
    assert [o.object_id for o in a.objects] == [o.object_id for o in b.objects]
    for x, y in zip(a.objects, b.objects, strict=True):
        np.testing.assert_array_equal(x.means, y.means)
        np.testing.assert_array_equal(x.quats, y.quats)


@PROPS
@given(render_requests())
def test_item24_render_payload_round_trips(request):
    _same_request(request, parse_render(encode_render(request), LIMITS))


@PROPS
@given(render_requests(), st.data())
def test_item24_render_payload_cut_or_padded_is_refused(request, data):
    body = encode_render(request)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(PayloadError):
        parse_render(body[:cut], LIMITS)
    with pytest.raises(PayloadError):
        parse_render(body + data.draw(st.binary(min_size=1, max_size=64)), LIMITS)


@PROPS
@given(render_requests(), st.data())
def test_item24_render_payload_byte_flips_are_refused_or_consistent(request, data):
    """Any single corrupted byte is either refused with PayloadError, or parses to exactly what it encodes."""
    body = bytearray(encode_render(request))
    index = data.draw(st.integers(0, len(body) - 1))
    body[index] = data.draw(st.integers(0, 255).filter(lambda v: v != body[index]))
    try:
        parsed = parse_render(bytes(body), LIMITS)
    except PayloadError:
        return
    assert encode_render(parsed) == bytes(body)


@PROPS
@given(st.binary(max_size=600))
def test_item24_arbitrary_bytes_never_crash_the_parsers(blob):
    for parse in (parse_render, parse_object):
        for prefix in (b"", b"PTRF\x01\x00", b"PTOB\x01\x00"):
            try:
                parse(prefix + blob, LIMITS)
            except PayloadError:
                pass


@PROPS
@given(object_payloads(), st.data())
def test_item24_object_payload_round_trips_and_refuses_other_lengths(attrs, data):
    body = encode_object(attrs)
    parsed = parse_object(body, LIMITS)
    assert encode_object(parsed) == body
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(PayloadError):
        parse_object(body[:cut], LIMITS)
    with pytest.raises(PayloadError):
        parse_object(body + data.draw(st.binary(min_size=1, max_size=32)), LIMITS)


# ------------------------------------------------------------------------------- schemathesis
SCHEMATHESIS_EXAMPLES = 25  # per operation; bounded so the suite stays short on two cores


def test_item24_schemathesis_finds_no_server_errors(live_server):
    """Every operation of /v1/openapi.json, positive and negative examples, authenticated: never a 5xx, and
    every answer is one the schema documents (status, content type, body shape)."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    auth = {"Authorization": f"Bearer {live_server.token}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/v1/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict[str, set[int]] = {}

    def fuzz(operation, mode):
        @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            response = case.call(base_url=live_server.url, headers=auth, timeout=60)
            seen.setdefault(operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=checks)

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise  # (negative: no parameter or body to make invalid, nothing to send)

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    assert all(code < 500 for codes in seen.values() for code in codes), seen
    assert live_server.client.get("/v1/ready").status_code == 200  # and the service still serves
