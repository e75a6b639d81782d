"""examples/sidecar/oauth_addon.py in a real mitmdump, with a fake token endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from kai_rpc.contract import ChatParams, ModelProvider
from kai_rpc.exceptions import ChatFailed
from kai_rpc.llm import LlmClient
from kai_rpc.local_llm import FakeLlm
from kai_rpc.sidecar import REPO, Sidecar
from tests.support.environ import clean_environ
from tests.support.fake_oauth import FakeTokenEndpoint

ADDON = REPO / "examples/sidecar/oauth_addon.py"
CLIENT_ID = "kai-sidecar-client"
CLIENT_SECRET = "client-secret-never-logged"
HELLO = ChatParams.model_validate({"messages": [{"role": "user", "content": "hi"}]})


class OAuthSetup:
    def __init__(self, tokens: FakeTokenEndpoint, sidecar: Sidecar) -> None:
        self.tokens = tokens
        self.sidecar = sidecar

    def environ(self) -> dict[str, str]:
        """Kai's side, as the example README documents it."""
        return clean_environ(
            {
                "OPENAI_PROXY": self.sidecar.url,
                "SSL_CERT_FILE": str(self.sidecar.ca_file),
                "OPENAI_API_KEY": "sk-placeholder-replaced-by-sidecar",
            }
        )


def _setup(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    *,
    ca_file: Path,
    llm: FakeLlm,
    expires_in: int,
    secret: str = CLIENT_SECRET,
) -> Iterator[OAuthSetup]:
    tokens = FakeTokenEndpoint(ca, CLIENT_ID, CLIENT_SECRET, expires_in).start()
    env = {
        "OAUTH_TOKEN_URL": tokens.url,
        "OAUTH_CLIENT_ID": CLIENT_ID,
        "OAUTH_CLIENT_SECRET": secret,
        "OAUTH_HOSTS": llm.host,
        "OAUTH_CA_FILE": str(ca_file),
    }
    sidecar = Sidecar(
        tmp_path_factory.mktemp("oauth"), ca_file, scripts=[ADDON], env=env
    )
    sidecar.start()
    yield OAuthSetup(tokens, sidecar)
    sidecar.stop()
    tokens.stop()


# Sidecar set-ups, as (token lifetime in seconds, client secret the addon sends).
LONG_LIVED = (3600, CLIENT_SECRET)
SHORT_LIVED = (1, CLIENT_SECRET)
WRONG_SECRET = (3600, "wrong-pw")


@pytest.fixture(scope="module")
def oauth(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: trustme.CA,
    test_ca_file: Path,
    _fake_llm_server: FakeLlm,
) -> Iterator[OAuthSetup]:
    """A token endpoint and a mitmdump running the addon, per request.param."""
    expires_in, secret = request.param
    yield from _setup(
        tmp_path_factory,
        test_ca,
        ca_file=test_ca_file,
        llm=_fake_llm_server,
        expires_in=expires_in,
        secret=secret,
    )


async def _chats(setup: OAuthSetup, url: str, count: int) -> None:
    client = LlmClient(setup.environ(), ModelProvider(args={"max_retries": 0}), [url])
    try:
        for _ in range(count):
            await client.chat(HELLO)
    finally:
        await client.aclose()


@pytest.mark.parametrize("oauth", [LONG_LIVED], indirect=True)
async def test_one_token_until_expiry(oauth: OAuthSetup, fake_llm: FakeLlm) -> None:
    """Three chats through the sidecar fetch one token, and the LLM sees it as
    the Authorization header instead of the client's key."""
    oauth.tokens.clear()

    await _chats(oauth, fake_llm.url, 3)

    assert len(oauth.tokens.token_requests()) == 1
    headers = [r.headers["authorization"] for r in fake_llm.chat_requests()]
    assert headers == ["Bearer token-1"] * 3


@pytest.mark.parametrize("oauth", [SHORT_LIVED], indirect=True)
async def test_expired_token_is_renewed(oauth: OAuthSetup, fake_llm: FakeLlm) -> None:
    """A token that lives less than the refresh margin is renewed for each call."""
    oauth.tokens.clear()

    await _chats(oauth, fake_llm.url, 2)

    assert len(oauth.tokens.token_requests()) == 2
    headers = [r.headers["authorization"] for r in fake_llm.chat_requests()]
    assert headers == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize("oauth", [WRONG_SECRET], indirect=True)
async def test_rejected_credentials_fail_without_leaking(
    oauth: OAuthSetup, fake_llm: FakeLlm
) -> None:
    """A refused client secret gives a chat error naming the OAuth variables; the
    LLM is never called and no secret reaches the error or mitmdump's log."""
    with pytest.raises(ChatFailed) as failed:
        await _chats(oauth, fake_llm.url, 1)

    assert failed.value.data == {"kind": "http_error"}
    assert "OAUTH_CLIENT_SECRET" in failed.value.message
    assert fake_llm.chat_requests() == []
    log = oauth.sidecar.output.read_text()
    assert "invalid_client" in log and "wrong-pw" not in log


@pytest.mark.parametrize("oauth", [LONG_LIVED], indirect=True)
async def test_secret_and_token_never_logged(
    oauth: OAuthSetup, fake_llm: FakeLlm
) -> None:
    """After a chat through the sidecar, mitmdump's output names the client id but
    never the secret or the token."""
    await _chats(oauth, fake_llm.url, 1)

    log = oauth.sidecar.output.read_text()
    assert CLIENT_ID in log
    assert CLIENT_SECRET not in log and "token-1" not in log
