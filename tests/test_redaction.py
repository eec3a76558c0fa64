"""PII redaction: what is replaced, what is left alone, full-width forms, counts."""

from __future__ import annotations

import pytest

from mentalglm.analysis.redaction import PLACEHOLDERS, id_checksum_ok, redact


@pytest.mark.parametrize("text, expected", [
    # URLs: schemes, glued to Chinese, trailing punctuation, parentheses, bare domains
    ("看这个https://t.cn/A6abcXyz好难过", "看这个[URL]好难过"),
    ("链接：https://weibo.com/u/123456?from=abc&x=1。然后", "链接：[URL]。然后"),
    ("see http://example.com/a.b, ok", "see [URL], ok"),
    ("(见 https://zh.wikipedia.org/wiki/Foo_(bar)) 结尾", "(见 [URL]) 结尾"),
    ("HTTPS://EXAMPLE.COM/X 大写", "[URL] 大写"),
    ("ftp://files.example.org/pub", "[URL]"),
    ("www.example.com/path，真的", "[URL]，真的"),
    ("t.cn/A6abc 看看", "[URL] 看看"),
    ("去weibo.com/u/1234搜我", "去[URL]搜我"),
    ("bbc.co.uk 新闻", "[URL] 新闻"),
    ("http://127.0.0.1:8000/v1 服务", "[URL] 服务"),
    # e-mail
    ("邮箱ab@qq.com看", "邮箱[EMAIL]看"),
    ("邮箱：a.b+c@mail.example.cn，", "邮箱：[EMAIL]，"),
    ("user_01@example.com", "[EMAIL]"),
    ("写信到 1234567@163.com 吧", "写信到 [EMAIL] 吧"),
    # ID cards: 18 (valid or not checksum, x or X, grouped), 15-digit old form
    ("身份证11010519491231002X你好", "身份证[ID]你好"),
    ("身份证号：110105199001011234", "身份证号：[ID]"),
    ("身份证 110105 19491231 002x", "身份证 [ID]"),
    ("ID110105199001011234", "ID[ID]"),
    ("老身份证110105491231002", "老身份证[ID]"),
    # mobiles
    ("电话13812345678", "电话[PHONE]"),
    ("电话 138-1234-5678，", "电话 [PHONE]，"),
    ("电话 138 1234 5678", "电话 [PHONE]"),
    ("+86 13812345678", "[PHONE]"),
    ("+8613812345678", "[PHONE]"),
    ("0086-138-1234-5678", "[PHONE]"),
    ("(+86)13812345678", "[PHONE]"),
    ("8613812345678", "[PHONE]"),
    ("手机13812345678和19987654321", "手机[PHONE]和[PHONE]"),
    # landlines
    ("座机010-12345678", "座机[PHONE]"),
    ("(0755)1234567", "[PHONE]"),
    ("（0755）12345678", "[PHONE]"),
    ("0755 8888 6666", "[PHONE]"),
    ("020-87654321", "[PHONE]"),
    ("+86 10 12345678", "[PHONE]"),
    ("010-12345678-123", "[PHONE]"),
    ("010-12345678转123", "[PHONE]"),
    ("010-12345678 2024年", "[PHONE] 2024年"),
    # mentions
    ("@张三 你好", "[@USER] 你好"),
    ("//@张三_abc-1:转发微博", "//[@USER]:转发微博"),
    ("@alice hi", "[@USER] hi"),
    ("谢谢@李四，@Bob_99 和@王五", "谢谢[@USER]，[@USER] 和[@USER]"),
    ("回复@小红:我也是", "回复[@USER]:我也是"),
    # full-width forms (matched after NFKC, the rest of the text kept as written)
    ("＠小明 你好！", "[@USER] 你好！"),
    ("电话１３８１２３４５６７８，谢谢！", "电话[PHONE]，谢谢！"),
    ("电话１３８－１２３４－５６７８", "电话[PHONE]"),
    ("ｈｔｔｐｓ：／／ｔ．ｃｎ／ａｂｃ好", "[URL]好"),
    ("邮箱ａｂ＠ｑｑ．ｃｏｍ。", "邮箱[EMAIL]。"),
    ("身份证１１０１０５１９４９１２３１００２Ｘ", "身份证[ID]"),
    ("＋８６　１３８１２３４５６７８", "[PHONE]"),
    # several kinds in one post, priorities
    ("加我 13812345678，或 ab@qq.com，或 https://x.com/@me ＠小明",
     "加我 [PHONE]，或 [EMAIL]，或 [URL] [@USER]"),
])
def test_redacts(text, expected):
    assert redact(text).text == expected


@pytest.mark.parametrize("text", [
    "2024-10-01",
    "2024年10月1日 20:30",
    "10/01/2024",
    "20241001",
    "坚持了27天",
    "花了1234567元",
    "存款 12345678 元",
    "23:59",
    "3.1415926",
    "3.14159265358979",
    "π≈3.14159265358979323846",
    "我的分数是99.5分",
    "10.5.1版本",
    "时间戳1700000000000",
    "订单号20241001123456789012",
    "QQ 12345678",
    "心理援助热线12356",
    "体重 138 斤",
    "第1380名",
    "foo@bar 不是邮箱",
    "我 @ 你",
    "I'm tired.Me too",
    "main.py 和 readme.md",
    "e.g. i.e. etc.",
    "1998 2003 2008 三年",
    "０７：３０起床",
    "２０２４－１０－０１",
    "Ｆ１赛车",
    "",
])
def test_leaves_ordinary_text_alone(text):
    result = redact(text)
    assert result.text == text
    assert result.total == 0


def test_counts_every_kind():
    result = redact("https://a.cn/x ab@qq.com 11010519491231002X 13812345678 010-12345678 @甲 @乙")
    assert result.counts == {"url": 1, "email": 1, "id_card": 1, "phone": 2, "mention": 2}
    assert result.total == 7
    assert set(redact("无").counts) == set(PLACEHOLDERS)


def test_rest_of_text_is_kept_as_written():
    text = "今天好累……\r\n＠小明　你说呢？ＯＫ！😭😭 电话：１３８１２３４５６７８。"
    assert redact(text).text == "今天好累……\r\n[@USER]　你说呢？ＯＫ！😭😭 电话：[PHONE]。"


def test_email_and_url_are_not_mentions():
    result = redact("ab@qq.com 和 https://weibo.com/@someone")
    assert result.counts["mention"] == 0
    assert result.text == "[EMAIL] 和 [URL]"


def test_mention_is_capped_at_weibo_nickname_length():
    result = redact("@" + "很" * 20 + " 然后")
    assert result.text == "[@USER]" + "很" * 5 + " 然后"
    assert redact("@" + "a" * 40).text == "[@USER]" + "a" * 10


def test_nfkc_expansion_maps_back_to_original_characters():
    # "㍿" expands to four characters under NFKC; the text around a match keeps its own characters
    assert redact("㍿ 电话13812345678 ㍿").text == "㍿ 电话[PHONE] ㍿"


def test_id_checksum():
    assert id_checksum_ok("11010519491231002X")
    assert id_checksum_ok("11010519491231002x")
    assert id_checksum_ok("１１０１０５１９４９１２３１００２Ｘ")
    assert not id_checksum_ok("110105194912310021")
    assert not id_checksum_ok("110105491231002")
    # a wrong check character is still redacted: a mistyped ID is still identifying
    assert redact("110105194912310021").text == "[ID]"


def test_redaction_is_idempotent():
    once = redact("电话13812345678，@张三 https://t.cn/x ab@qq.com").text
    assert redact(once).text == once
